"""Assemble the busybox initramfs: a staging tree packed with ``cpio`` and ``gzip``.

The tree holds the static busybox from Debian's ``busybox-static``, the init
script from ``vm-images/linux/init``, the kernel modules in load order (those
loaded at boot, and groups loaded on demand by a helper), the ACPI power-button
action, the guest programs compiled from ``vm-images/linux/programs/``, the
helper scripts of ``vm-images/linux/scripts/`` and the host programs of
``vm-images/linux/binaries`` (e.g. ``/sbin/cryptsetup``) with exactly the
loader and libraries they need. Timestamps are pinned and the file list sorted,
so the same inputs give the same bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from vlab.errors import VlabError
from vlab.images.elfdeps import Program

__all__ = ["BUSYBOX", "stage_tree", "compile_program", "pack"]

#: Debian's busybox-static installs a statically linked busybox here.
BUSYBOX = Path("/bin/busybox")
#: 2000-01-01: every file in the image gets this mtime, so builds are reproducible.
EPOCH = 946684800

# busybox acpid runs /etc/acpi/<event>/<code> for the power button (event "PWRF", code 00000080).
_POWER_ACTION = "#!/bin/sh\n# ACPI power button (QMP system_powerdown): power off now.\npoweroff -f\n"


def _check_tool(name: str, package: str) -> None:
    if shutil.which(name) is None:
        raise VlabError(f"{name} is not installed", field="images", fix=f"sudo apt-get install {package}")


def compile_program(source: Path, out: Path) -> Path:
    """Compile a guest program with Debian's gcc as a small static binary (reproducible flags)."""
    _check_tool("gcc", "gcc libc6-dev")
    argv = [
        "gcc",
        "-static",
        "-Os",
        "-s",
        f"-ffile-prefix-map={source.parent}=.",
        "-o",
        str(out),
        str(source),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise VlabError(
            f"compiling {source.name} failed",
            field="images",
            detail=done.stderr[-2000:],
            fix="install the C toolchain: sudo apt-get install gcc libc6-dev",
        )
    return out


def stage_tree(root: Path, *, init: Path, modules: list[Path], programs: list[Path],
               on_demand: dict[str, list[Path]] | None = None, host_programs: list[Program] | None = None,
               scripts: list[Path] | None = None) -> None:
    """Lay out the initramfs file tree under ``root``.

    :param on_demand: group -> modules in load order, listed in ``/etc/vlab/modules.<group>`` for a guest
        helper to load when first needed (``/lib/modules`` holds them beside the boot modules).
    :param host_programs: dynamically linked host programs, copied to their path with their loader and libraries.
    :param scripts: guest helper scripts, installed in ``/bin`` (first in the guest's PATH).
    """
    if not BUSYBOX.exists():
        raise VlabError(
            "busybox is missing", field="images", value=str(BUSYBOX), fix="sudo apt-get install busybox-static"
        )
    for sub in ("bin", "sbin", "etc/vlab", "etc/acpi/PWRF", "lib/modules", "root", "var/log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BUSYBOX, root / "bin" / "busybox")
    shutil.copyfile(init, root / "init")
    (root / "etc" / "acpi" / "PWRF" / "00000080").write_text(_POWER_ACTION)
    groups = {"": modules, **(on_demand or {})}
    for group, group_modules in groups.items():
        for module in group_modules:
            shutil.copyfile(module, root / "lib" / "modules" / module.name)
        order = "".join(f"{module.stem}\n" for module in group_modules)
        (root / "etc" / "vlab" / ("modules" + (f".{group}" if group else ""))).write_text(order)
    for program in programs:
        shutil.copyfile(program, root / "bin" / program.name)
    for script in scripts or []:
        shutil.copyfile(script, root / "bin" / script.name)
    copied: dict[Path, bool] = {}  # guest file -> executable, as its host file is (the loader must be)
    for host in host_programs or []:
        for source, target in [(host.source, host.target), *((o.source, o.target) for o in host.objects)]:
            dest = root / target.relative_to("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            copied[dest] = bool(source.stat().st_mode & 0o111)
    for path in [root, *root.rglob("*")]:
        executable = path.is_dir() or path.parent.name in ("bin", "PWRF") or path.name == "init"
        os.chmod(path, 0o755 if copied.get(path, executable) else 0o644)


#: initramfs compressors: argv reading the cpio archive on stdin (both reproducible: no name, no time stored)
COMPRESSORS = {"gzip": ["gzip", "-9", "-n"],
               # -l: the legacy frame format, the only one the kernel's initramfs unpacker reads
               "lz4": ["lz4", "-l", "-9", "-q", "-c"]}


def pack(root: Path, out: Path, compress: str = "gzip") -> None:
    """Pack ``root`` as a compressed newc cpio archive at ``out`` (reproducibly); ``compress`` names a
    :data:`COMPRESSORS` entry."""
    _check_tool("cpio", "cpio")
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    for rel in [".", *paths]:
        os.utime(root / rel, (EPOCH, EPOCH), follow_symlinks=False)
    listing = "\n".join([".", *paths]) + "\n"
    archive = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
        cwd=root,
        input=listing.encode(),
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise VlabError("cpio failed", field="images", detail=archive.stderr.decode()[-2000:])
    _check_tool(COMPRESSORS[compress][0], "lz4" if compress == "lz4" else "gzip")
    packed = subprocess.run(COMPRESSORS[compress], input=archive.stdout, capture_output=True, check=True)
    out.write_bytes(packed.stdout)
