"""``vlab images build``: the guest images, from Debian packages only.

Steps: resolve and download the kernel package, keep the kernel and the needed
modules (those loaded at boot, and the groups a guest helper loads on demand),
compile the guest programs, copy the host programs of ``linux/binaries`` with
their loader and libraries (:mod:`vlab.images.elfdeps`), stage and pack the
busybox initramfs, assemble the toy VMM's RISC-V guest programs, and write the
manifest. Work
happens in a temporary directory next to the image directory; files are moved
into place only when all steps succeeded, and the temporary directory is
always removed.

A build is skipped when the manifest's *inputs key* (package versions, the
hashes of every recipe file and of the host programs' files) is unchanged and
the files still match their checksums.

``--kernel minimal`` (:func:`build_images` with ``kernel="minimal"``) builds the
optional minimal flavour into ``<image cache>/minimal/`` instead: the kernel
compiled from Debian's source (:mod:`vlab.images.minimal`, cached under
``<image cache>/kernels/``), no modules, the same init, programs and host
programs. The default image (the stock kernel) is not touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vlab.errors import VlabError
from vlab.images import elfdeps, initramfs, kernel, minimal
from vlab.images.manifest import FileEntry, Manifest, sha256_file
from vlab.paths import images_dir, vm_images_src

__all__ = ["KERNEL_NAME", "PVH_KERNEL_NAME", "INITRD_NAME", "MINIMAL_INITRD_NAME", "BUILD_STEPS", "FLAVOURS",
           "BuildResult", "build_images", "flavour_dir", "inputs_key"]

KERNEL_NAME = "vmlinuz"
#: the kernel's PVH-entry ELF, when the bzImage's payload could be decompressed (see kernel.pvh_elf)
PVH_KERNEL_NAME = "vmlinux"
INITRD_NAME = "initramfs.cpio.gz"
#: the minimal flavour's initramfs is LZ4 (legacy frames): unpacked ~0.25 s sooner than gzip under TCG, +0.9 MB
MINIMAL_INITRD_NAME = "initramfs.cpio.lz4"
TOYVMM_DIR = "toyvmm"
#: the guest kernel flavours: Debian's stock cloud kernel (the default image), or the minimal one compiled here
FLAVOURS = ("stock", "minimal")
#: where the minimal flavour's image goes, and where its compiled kernels are cached (both in the image cache)
MINIMAL_DIR = "minimal"
KERNELS_DIR = "kernels"

Report = Callable[[str], None]
#: How many times a full build calls its ``report`` (for a progress bar).
BUILD_STEPS = 6


@dataclass(frozen=True)
class BuildResult:
    """What a build did: ``built`` is False when it was a no-op."""

    directory: Path
    manifest: Manifest
    built: bool


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "missing"
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


def _recipe_files() -> list[Path]:
    src = vm_images_src()
    # Documentation (*.md) does not change what is built, so editing it does not trigger a rebuild; nor does the
    # minimal kernel's fragment change the stock image (the minimal flavour's key hashes it through its kernel key).
    recipe = [p for p in sorted(src.rglob("*")) if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".md"
              and p.relative_to(src).as_posix() != minimal.FRAGMENT]
    code = sorted(Path(__file__).parent.glob("*.py"))
    return recipe + code


def inputs_key(kernel_id: str) -> str:
    """Hash of everything the build reads: the kernel package, tool versions and recipe files."""
    digest = hashlib.sha256()
    digest.update(kernel_id.encode())
    for argv in (["busybox"], ["gcc", "--version"], ["riscv64-unknown-elf-as", "--version"], ["lz4", "--version"]):
        digest.update(_tool_version(argv).encode())
    for path in _recipe_files():
        digest.update(str(path.relative_to(path.parents[1])).encode())
        digest.update(path.read_bytes())
    digest.update(_host_programs_identity().encode())
    return digest.hexdigest()


def _recipe_lines(name: str) -> list[str]:
    text = (vm_images_src() / "linux" / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _wanted_modules() -> list[str]:
    return _recipe_lines("modules")


def _on_demand_modules() -> dict[str, list[str]]:
    """``linux/modules-<group>`` files: modules a guest helper loads when first needed, not at every boot."""
    files = sorted((vm_images_src() / "linux").glob("modules-*"))
    return {path.name.removeprefix("modules-"): _recipe_lines(path.name) for path in files}


def _wanted_binaries() -> list[tuple[PurePosixPath, str]]:
    """``linux/binaries``: (path of a host program, the Debian package that installs it), one pair a line."""
    if not (vm_images_src() / "linux" / "binaries").exists():
        return []
    wanted = []
    for line in _recipe_lines("binaries"):
        words = line.split()
        if len(words) != 2 or not words[0].startswith("/"):
            raise VlabError("each line must be an absolute program path and its Debian package",
                            field="vm-images/linux/binaries", value=line, fix="e.g. /sbin/cryptsetup cryptsetup-bin")
        wanted.append((PurePosixPath(words[0]), words[1]))
    return wanted


def _host_programs() -> list[elfdeps.Program]:
    """The programs of ``linux/binaries`` with their loader and libraries, resolved on this host."""
    programs = []
    for path, package in _wanted_binaries():
        if not Path(path).is_file():
            raise VlabError(f"{path} is not installed", field="vm-images/linux/binaries", value=str(path),
                            fix=f"sudo apt-get install {package} (binder/apt.txt lists it)")
        programs.append(elfdeps.needed_objects(Path(path), path))
    return programs


def _host_programs_identity() -> str:
    """What the inputs key hashes for the host programs: every file's path and content (a Debian update of a
    library rebuilds the image); a missing program is hashed as missing, and the build then says how to fix it."""
    digest = hashlib.sha256()
    try:
        programs = _host_programs()
    except VlabError as exc:
        return f"unresolved: {exc}"
    for program in programs:
        for target, source in [(program.target, program.source), *((o.target, o.source) for o in program.objects)]:
            digest.update(f"{target}\0{sha256_file(source)}\0".encode())
    return digest.hexdigest()


def _package_versions(paths: list[PurePosixPath]) -> dict[str, str]:
    """Debian package -> version for the packages that installed ``paths`` (dpkg knows a file by the path its
    package ships, e.g. /lib/x86_64-linux-gnu/libc.so.6 on Debian 12, /usr/lib/... on Ubuntu 24.04)."""
    candidates = sorted({str(p) for path in paths for p in (path, PurePosixPath("/usr") / path.relative_to("/"))})
    owners = subprocess.run(["dpkg-query", "-S", *candidates], capture_output=True, text=True, check=False)
    # "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"; diversion lines ("diversion by …") are not owners
    names = {name.strip().split(":")[0] for line in owners.stdout.splitlines() if not line.startswith("diversion ")
             for name in line.split(": /", 1)[0].split(",")}
    packages = sorted(name for name in names if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", name))
    if not packages:
        return {}
    shown = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\n", *packages], capture_output=True,
                           text=True, check=False)
    return dict(line.split(" ", 1) for line in shown.stdout.splitlines() if " " in line)


def _kernel_identity(workdir: Path) -> str:
    given = os.environ.get("VLAB_KERNEL_DEB")
    if given:
        return f"deb:{given}:{Path(given).stat().st_size if Path(given).exists() else 'missing'}"
    if not os.environ.get("VLAB_KERNEL_PACKAGE"):
        return kernel.load_pin().identity  # no apt query: the pin says what will be fetched
    name, options = kernel.resolve_package(workdir)
    policy = subprocess.run(["apt-cache", *options, "policy", name], capture_output=True, text=True, check=False)
    candidate = next(
        (line.split(":", 1)[1].strip() for line in policy.stdout.splitlines() if line.strip().startswith("Candidate:")),
        "unknown",
    )
    return f"{name}={candidate}"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One build at a time per image directory; under the lock, leftovers of a killed build are removed."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = (directory / ".build.lock").open("w")
    except OSError as exc:
        raise VlabError(f"the image cache cannot be written ({exc.strerror})", field="images", value=str(directory),
                        fix="point VLAB_IMAGES at a writable directory, e.g. VLAB_IMAGES=~/vlab-images") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in directory.glob(".build-*"):  # only a killed build leaves one: builds hold this lock
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        yield


def _build_toyvmm(out: Path) -> dict[str, Path]:
    from vlab.toyvmm.programs import build_all  # imported here: it loads Unicorn, which the other steps don't need

    out.mkdir(parents=True, exist_ok=True)
    return build_all(out)


def _build_into(stage: Path, workdir: Path, report: Report) -> Manifest:
    report("downloading the kernel package")
    deb, fetched_via = kernel.fetch_package(workdir)
    package = kernel.package_of(deb)
    report(f"extracting the kernel and modules from {package.name} {package.version}")
    extracted = kernel.extract_kernel(deb, workdir, _wanted_modules(), _on_demand_modules())
    shutil.copyfile(extracted.vmlinuz, stage / KERNEL_NAME)
    # the same kernel as a PVH ELF, which -M microvm enters directly (vlab.qemu.config.pvh_kernel)
    pvh = kernel.pvh_elf(stage / KERNEL_NAME, stage / PVH_KERNEL_NAME)
    host_programs = _host_programs()

    report("compiling the guest programs")
    programs_dir = workdir / "programs"
    programs_dir.mkdir()
    programs = [
        initramfs.compile_program(src, programs_dir / src.stem)
        for src in sorted((vm_images_src() / "linux" / "programs").glob("*.c"))
    ]

    report("packing the busybox initramfs")
    tree = workdir / "initramfs"
    initramfs.stage_tree(tree, init=vm_images_src() / "linux" / "init", modules=extracted.modules, programs=programs,
                         on_demand=extracted.on_demand, host_programs=host_programs,
                         scripts=sorted((vm_images_src() / "linux" / "scripts").glob("*")))
    initramfs.pack(tree, stage / INITRD_NAME)

    report("assembling the toy VMM guest programs")
    toy = _build_toyvmm(stage / TOYVMM_DIR)

    names = [KERNEL_NAME, *([PVH_KERNEL_NAME] if pvh else []), INITRD_NAME,
             *(f"{TOYVMM_DIR}/{p.name}" for p in toy.values())]
    sources = {
        package.name: package.version,
        "busybox-static": _tool_version(["busybox"]),
        "gcc": _tool_version(["gcc", "--version"]),
    }
    copied = [path for p in host_programs for path in (p.target, *(o.target for o in p.objects))]
    sources.update(_package_versions(copied))
    if toy:
        sources["binutils-riscv64-unknown-elf"] = _tool_version(["riscv64-unknown-elf-as", "--version"])
    details = {
        "flavour": "stock",
        "kernel_deb_sha256": sha256_file(deb),
        "kernel_fetched_via": fetched_via,
        "kernel_modules": [m.stem for m in extracted.modules],
        "builtin_modules": extracted.builtin,
        "on_demand_modules": {group: [m.stem for m in mods] for group, mods in extracted.on_demand.items()},
        "host_programs": {str(p.target): [str(o.target) for o in p.objects] for p in host_programs},
        "guest_programs": [p.name for p in programs],
        "toyvmm_programs": sorted(toy),
    }
    return Manifest("", {n: FileEntry.of(stage, n) for n in names}, sources, details)


def flavour_dir(kernel: str = "stock") -> Path:
    """The image directory of a kernel flavour: the image cache itself, or its ``minimal/`` subdirectory."""
    _check_flavour(kernel)
    return images_dir() if kernel == "stock" else images_dir() / MINIMAL_DIR


def _check_flavour(kernel: str) -> None:
    if kernel not in FLAVOURS:
        raise VlabError("is not a guest kernel flavour", field="--kernel", value=kernel,
                        fix="--kernel stock (Debian's cloud kernel, the default) or --kernel minimal")


def build_images(directory: Path | None = None, *, force: bool = False, report: Report = print,
                 kernel: str = "stock") -> BuildResult:
    """Build the guest images into ``directory`` (default :func:`flavour_dir` of ``kernel``).

    :param force: rebuild even when the inputs have not changed (the minimal kernel is then compiled again, and
        its bytes compared with the cached build's).
    :param report: called with a line of progress for each step.
    :param kernel: ``"stock"`` (the default image) or ``"minimal"`` (see :mod:`vlab.images.minimal`).
    """
    _check_flavour(kernel)
    if kernel == "minimal":
        return _build_minimal(directory or flavour_dir("minimal"), force, report)
    target = directory or images_dir()
    with _locked(target), _staging(target) as tmp:
        workdir = Path(tmp)
        key = inputs_key(_kernel_identity(workdir))
        old = Manifest.load(target)
        if not force and old and old.inputs_key == key and not old.problems(target):
            report(f"images are up to date in {target}")
            return BuildResult(target, old, built=False)
        stage = workdir / "stage"
        stage.mkdir()
        manifest = _build_into(stage, workdir, report)
        manifest.inputs_key = key
        _install(stage, target, manifest)
        report(f"images written to {target}")
        return BuildResult(target, manifest, built=True)


def _build_minimal(target: Path, force: bool, report: Report) -> BuildResult:
    """The minimal flavour: the compiled kernel (from the cache when built before), no modules, the same
    initramfs recipe otherwise (cryptsetup works: dm-crypt, AES/XTS and AF_ALG are built in)."""
    minimal.require_build_deps()  # before anything is written: this flavour is optional, its tools may be missing
    cache = images_dir() / KERNELS_DIR
    with _locked(target), _staging(target) as tmp:
        kernel_key, kernel_inputs = minimal.current_inputs()
        key = inputs_key(f"minimal {kernel_key}")
        old = Manifest.load(target)
        if not force and old and old.inputs_key == key and not old.problems(target) \
                and minimal.find_cached(cache, kernel_key) is not None:
            report(f"minimal-kernel images are up to date in {target}")
            return BuildResult(target, old, built=False)
        with _locked(cache):
            built = minimal.build_kernel(cache, report, force=force)
        workdir = Path(tmp)
        stage = workdir / "stage"
        stage.mkdir()
        shutil.copyfile(built.vmlinuz, stage / KERNEL_NAME)
        shutil.copyfile(built.vmlinux, stage / PVH_KERNEL_NAME)
        host_programs = _host_programs()
        report("compiling the guest programs")
        programs_dir = workdir / "programs"
        programs_dir.mkdir()
        programs = [initramfs.compile_program(src, programs_dir / src.stem)
                    for src in sorted((vm_images_src() / "linux" / "programs").glob("*.c"))]
        report("packing the busybox initramfs (no kernel modules: all built in)")
        tree = workdir / "initramfs"
        # empty module lists: the init's and /bin/cryptsetup's insmod loops then have nothing to do
        initramfs.stage_tree(tree, init=vm_images_src() / "linux" / "init", modules=[], programs=programs,
                             on_demand={group: [] for group in _on_demand_modules()}, host_programs=host_programs,
                             scripts=sorted((vm_images_src() / "linux" / "scripts").glob("*")))
        initramfs.pack(tree, stage / MINIMAL_INITRD_NAME, compress="lz4")
        sources = {minimal.SOURCE_PACKAGE: kernel_inputs["source_version"],
                   "busybox-static": _tool_version(["busybox"]), "gcc": _tool_version(["gcc", "--version"])}
        sources.update(_package_versions([path for p in host_programs
                                          for path in (p.target, *(o.target for o in p.objects))]))
        details: dict[str, Any] = {
            "flavour": "minimal",
            "kernel_cache": str(built.directory),
            "kernel_cache_hit": built.hit,
            "kernel_inputs": kernel_inputs,
            "kernel_build_seconds": built.info.get("build_seconds"),
            "kernel_reproduced": built.info.get("reproduced"),
            "kernel_modules": [],
            "on_demand_modules": {group: [] for group in _on_demand_modules()},
            "host_programs": {str(p.target): [str(o.target) for o in p.objects] for p in host_programs},
            "guest_programs": [p.name for p in programs],
        }
        names = [KERNEL_NAME, PVH_KERNEL_NAME, MINIMAL_INITRD_NAME]
        manifest = Manifest(key, {n: FileEntry.of(stage, n) for n in names}, sources, details)
        _install(stage, target, manifest)
        report(f"minimal-kernel images written to {target}")
        return BuildResult(target, manifest, built=True)


@contextmanager
def _staging(target: Path) -> Iterator[str]:
    """A private ``.build-*`` directory in ``target`` (same filesystem: installing is a rename)."""
    try:
        staging = tempfile.TemporaryDirectory(dir=target, prefix=".build-")
    except OSError as exc:
        raise VlabError(f"the image cache cannot be written ({exc.strerror})", field="images", value=str(target),
                        fix="free space there, or point VLAB_IMAGES at a writable directory") from None
    with staging as tmp:
        yield tmp


def _install(stage: Path, target: Path, manifest: Manifest) -> None:
    """Move the staged files into place (each by rename), then the manifest last."""
    for name in manifest.files:
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / name, dest)
    manifest.save(target)


def require_image(name: str, directory: Path | None = None, *, kernel: str = "stock") -> Path:
    """The path of a built image file, or a VlabError that says how to build it."""
    path = (directory or flavour_dir(kernel)) / name
    if not path.exists():
        raise VlabError(
            "the guest image has not been built" if kernel == "stock"
            else f"the {kernel}-kernel image has not been built",
            field="images",
            value=str(path),
            fix="run `vlab images build` (or ./setup.sh, which does it)" if kernel == "stock"
            else f"run `vlab images build --kernel {kernel}` (compiles a kernel: ~5 min on 2 cores, then cached)",
        )
    return path
