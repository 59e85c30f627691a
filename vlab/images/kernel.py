"""Get a guest kernel and its modules from the distribution's kernel package.

Nothing is compiled: ``apt-get download`` fetches the package (no root needed
when the apt lists are present; otherwise a private copy of the lists is
fetched into the work directory), ``dpkg-deb -x`` unpacks it, and only the
kernel image and the modules the guest needs are kept. Reading the package
instead of ``/boot`` matters on Ubuntu (and Binder), where ``/boot/vmlinuz-*``
is readable by root only.

The guest kernel is pinned (``vm-images/linux/kernel.json``: package, version,
sha256 of the .deb, Debian's archive), so every machine boots the same bytes:
this one, CI and Binder. Debian's ``-cloud-amd64`` flavour: its LZ4-compressed
bzImage boots in about half the time of the generic XZ one under TCG. Where the
system's apt cannot supply the pinned package (Ubuntu, as on Binder, or a
Debian whose lists are gone), a private apt configuration reaches Debian's
archive, trusting only Debian's archive keyring (``debian-archive-keyring``,
packaged by Ubuntu too); no root is needed. The .deb's sha256 is checked
against the pin either way. ``VLAB_KERNEL_PACKAGE`` (any distribution's
package, unpinned) and ``VLAB_KERNEL_DEB`` (a .deb file) override the pin.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from vlab.errors import VlabError
from vlab.images.manifest import sha256_file
from vlab.paths import vm_images_src

__all__ = ["KernelPackage", "KernelPin", "DEBIAN_KEYRING", "load_pin", "resolve_package", "fetch_package",
           "fetch_pinned", "extract_kernel"]

#: the pin, under vm-images/
PIN_FILE = "linux/kernel.json"
#: Debian's archive keys (package debian-archive-keyring, in Debian and Ubuntu alike)
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_PIN_FIELDS = {"package": r"linux-image-[a-z0-9.+-]+", "version": r"[0-9][A-Za-z0-9.+~:-]*",
               "architecture": r"[a-z0-9]+", "sha256": r"[0-9a-f]{64}"}
#: one source of the pin: "URI SUITE COMPONENT…", http(s) only
_SOURCE = re.compile(r"https?://[A-Za-z0-9._~/:-]+ [a-z0-9-]+( [a-z0-9-]+)+")


@dataclass(frozen=True)
class KernelPin:
    """The guest kernel package everyone boots (``vm-images/linux/kernel.json``)."""

    package: str
    version: str
    architecture: str
    sha256: str
    sources: tuple[str, ...]

    @property
    def identity(self) -> str:
        """What the image build's inputs key hashes for this kernel."""
        return f"{self.package}={self.version} sha256:{self.sha256}"


def load_pin(path: Path | None = None) -> KernelPin:
    """Read and check the pin; a VlabError names a bad field."""
    path = path or vm_images_src() / PIN_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VlabError(f"cannot read the kernel pin ({exc})", field=PIN_FILE, value=str(path),
                        fix="restore vm-images/linux/kernel.json from the repository") from None
    if not isinstance(raw, dict):
        raise VlabError("the kernel pin must be a JSON object", field=PIN_FILE, value=raw,
                        fix="restore vm-images/linux/kernel.json from the repository")
    for name, pattern in _PIN_FIELDS.items():
        value = raw.get(name)
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise VlabError("missing or malformed in the kernel pin", field=f"{PIN_FILE}: {name}", value=value,
                            fix=f"a string matching {pattern}")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(
            isinstance(line, str) and _SOURCE.fullmatch(line) for line in sources):
        raise VlabError("sources must be a list of 'URI SUITE COMPONENT' lines", field=f"{PIN_FILE}: sources",
                        value=sources, fix='e.g. ["http://deb.debian.org/debian bookworm main"]')
    return KernelPin(raw["package"], raw["version"], raw["architecture"], raw["sha256"], tuple(sources))


@dataclass(frozen=True)
class KernelPackage:
    """A concrete kernel package: e.g. ``linux-image-6.1.0-56-cloud-amd64`` at ``6.1.192-2``."""

    name: str
    version: str


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise VlabError(
            f"{argv[0]} is not installed",
            field="images",
            fix="install the Debian packages: sudo apt-get install apt dpkg kmod cpio busybox-static",
        ) from exc
    if done.returncode != 0:
        raise VlabError(
            f"`{' '.join(argv)}` failed (exit {done.returncode})",
            field="images",
            detail=(done.stderr or done.stdout)[-2000:],
            fix="check that apt works (sudo apt-get update) or set VLAB_KERNEL_DEB to a downloaded kernel .deb",
        )
    return done.stdout


def _apt_options(lists_dir: Path | None) -> list[str]:
    if lists_dir is None:
        return []
    # A private state directory lets a non-root user (Binder's postBuild) use apt without the system's lists.
    return [
        "-o",
        f"Dir::State::Lists={lists_dir}",
        "-o",
        f"Dir::Cache={lists_dir.parent / 'apt-cache'}",
        "-o",
        "Debug::NoLocking=1",
        "-o",
        "APT::Sandbox::User=" + os.environ.get("USER", "root"),
    ]


def _private_lists(workdir: Path) -> Path:
    lists = workdir / "apt-lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (workdir / "apt-cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "update", "-qq", *_apt_options(lists)])
    return lists


def _depends_on_image(metapackage: str, options: list[str]) -> str | None:
    try:
        out = _run(["apt-cache", *options, "depends", metapackage])
    except VlabError:
        return None
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match and match.group(1) != metapackage:
            return match.group(1)
    return None


def _find_package(name: str, options: list[str]) -> str | None:
    concrete = _depends_on_image(name, options)
    if concrete:
        return concrete
    if _run(["apt-cache", *options, "policy", name]).strip():
        return name  # not a metapackage: take it as is
    return None


def resolve_package(workdir: Path) -> tuple[str, list[str]]:
    """The package ``VLAB_KERNEL_PACKAGE`` names (a metapackage is followed to its image package), and the apt
    options that reach it. The system's apt lists are tried first; without them (a non-root user after the lists
    were cleaned) a private copy of them is fetched into ``workdir``.
    """
    wanted = os.environ.get("VLAB_KERNEL_PACKAGE", "")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", wanted):
        raise VlabError("not a package name", field="VLAB_KERNEL_PACKAGE", value=wanted,
                        fix="e.g. linux-image-cloud-amd64, or unset it to use the pinned kernel")
    found = _find_package(wanted, [])
    if found:
        return found, []
    options = _apt_options(_private_lists(workdir))
    found = _find_package(wanted, options)
    if found:
        return found, options
    raise VlabError(
        "no kernel package found in the apt sources",
        field="VLAB_KERNEL_PACKAGE",
        value=wanted,
        fix="run `sudo apt-get update`, or set VLAB_KERNEL_PACKAGE (e.g. linux-image-cloud-amd64) "
        "or VLAB_KERNEL_DEB=/path/to/linux-image.deb",
    )


def fetch_package(workdir: Path) -> tuple[Path, str]:
    """Download the kernel .deb into ``workdir``: the pinned one, unless ``VLAB_KERNEL_DEB`` (a file) or
    ``VLAB_KERNEL_PACKAGE`` (a package from the system's apt) says otherwise.

    :return: the .deb's path, and where it came from (recorded in the image manifest).
    """
    given = os.environ.get("VLAB_KERNEL_DEB")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise VlabError("file not found", field="VLAB_KERNEL_DEB", value=given, fix="point it at a kernel .deb")
        return path, "VLAB_KERNEL_DEB"
    if not os.environ.get("VLAB_KERNEL_PACKAGE"):
        return fetch_pinned(workdir, load_pin())
    name, options = resolve_package(workdir)
    _run(["apt-get", *options, "download", "-qq", name], cwd=workdir)
    debs = sorted(workdir.glob(f"{name}_*.deb"))
    if not debs:
        raise VlabError(f"apt-get download {name} produced no .deb", field="images", fix="check apt's sources")
    modules = modules_package(name)
    if _in_archive(modules, options):  # Ubuntu: the modules live in a package of their own, beside the image
        _run(["apt-get", *options, "download", "-qq", modules], cwd=workdir)
    return debs[0], "VLAB_KERNEL_PACKAGE (unpinned)"


def fetch_pinned(workdir: Path, pin: KernelPin) -> tuple[Path, str]:
    """The pinned .deb in ``workdir``: from the system's apt if it has that version, else from Debian's archive
    through a private apt configuration; its sha256 checked against the pin. Returns it and which way it came.

    :raises VlabError: if neither way gets it, or the bytes are not the pinned ones.
    """
    wanted = f"{pin.package}={pin.version}"
    try:
        _run(["apt-get", "download", "-qq", wanted], cwd=workdir)
        via = "the system's apt"
    except VlabError:  # not in the system's lists (Ubuntu, emptied lists): Debian's archive, privately
        _run(["apt-get", *_debian_apt(workdir, pin), "update", "-qq"])
        _run(["apt-get", *_debian_apt(workdir, pin), "download", "-qq", wanted], cwd=workdir)
        via = "Debian's archive through a private apt configuration"
    debs = sorted(workdir.glob(f"{pin.package}_*.deb"))
    if len(debs) != 1:
        raise VlabError(f"apt-get download {wanted} produced {len(debs)} .deb files", field="images",
                        fix="check apt's sources")
    digest = sha256_file(debs[0])
    if digest != pin.sha256:
        debs[0].unlink()
        raise VlabError(f"{debs[0].name} is not the pinned kernel (sha256 {digest})", field=f"{PIN_FILE}: sha256",
                        value=pin.sha256, fix="update the pin to a package Debian's archive serves, and rebuild")
    return debs[0], via


def _debian_apt(workdir: Path, pin: KernelPin) -> list[str]:
    """apt options for a private configuration in ``workdir`` that reaches only the pin's Debian sources and
    trusts only Debian's archive keys (no system lists, preferences or keys; no root)."""
    if not DEBIAN_KEYRING.is_file():
        raise VlabError("Debian's archive keyring is missing", field="images", value=str(DEBIAN_KEYRING),
                        fix="sudo apt-get install debian-archive-keyring (Binder: it is in binder/apt.txt)")
    root = workdir / "debian-apt"
    empty = root / "empty"
    for directory in (empty, root / "lists" / "partial", root / "cache" / "archives" / "partial"):
        directory.mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    sources.write_text("".join(f"deb [arch={pin.architecture} signed-by={DEBIAN_KEYRING}] {line}\n"
                               for line in pin.sources))
    settings = {
        "Dir::Etc::SourceList": sources, "Dir::Etc::SourceParts": empty, "Dir::Etc::Preferences": empty / "none",
        "Dir::Etc::PreferencesParts": empty, "Dir::Etc::Trusted": empty / "none", "Dir::Etc::TrustedParts": empty,
        "Dir::State::Lists": root / "lists", "Dir::Cache": root / "cache",
        "APT::Architecture": pin.architecture, "APT::Architectures": pin.architecture, "Debug::NoLocking": 1,
        "APT::Sandbox::User": os.environ.get("USER", "root"), "Acquire::Languages": "none",
    }
    return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]


def modules_package(image: str) -> str:
    """Ubuntu's modules package for an image package (``linux-image-X`` -> ``linux-modules-X``); Debian has none."""
    return "linux-modules-" + image.removeprefix("linux-image-")


def _in_archive(name: str, options: list[str]) -> bool:
    done = subprocess.run(["apt-cache", *options, "show", name], capture_output=True, text=True, check=False)
    return done.returncode == 0 and bool(done.stdout.strip())


def package_of(deb: Path) -> KernelPackage:
    """Name and version recorded in a .deb's control file."""
    name = _run(["dpkg-deb", "-f", str(deb), "Package"]).strip()
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    return KernelPackage(name, version)


def _module_files(modules_root: Path) -> dict[str, Path]:
    """Module name (as modinfo spells it, ``-`` and ``_`` equal) -> file, for every module in the package."""
    found: dict[str, Path] = {}
    for path in modules_root.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        found[name] = path
    return found


def _decompressed(path: Path, out: Path) -> Path:
    """Copy a module to ``out``, decompressing ``.ko.xz``/``.ko.zst`` (busybox insmod wants plain ``.ko``)."""
    if path.suffix == ".xz":
        out.write_bytes(lzma.decompress(path.read_bytes()))
    elif path.suffix == ".zst":
        _run(["zstd", "-q", "-d", "-f", str(path), "-o", str(out)])
    else:
        shutil.copyfile(path, out)
    return out


def pvh_elf(vmlinuz: Path, out: Path) -> Path | None:
    """Write the ELF kernel inside bzImage ``vmlinuz`` to ``out`` if it has a PVH entry; None when it cannot.

    QEMU starts such an ELF at its PVH entry (``XEN_ELFNOTE_PHYS32_ENTRY``) on ``-M microvm``: no firmware boot
    path and no decompressor, about 0.4 s of a TCG cold boot. It is the same kernel, only not compressed: the
    bzImage's payload (``payload_offset``/``payload_length`` of the boot protocol), decompressed with Python's
    zlib/lzma or the ``lz4``/``zstd`` tools. A format without a decompressor here, or an ELF without the note,
    gives None (microvm then boots the bzImage).
    """
    data = vmlinuz.read_bytes()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512 + int.from_bytes(data[0x248:0x24C], "little")
    payload = data[start:start + int.from_bytes(data[0x24C:0x250], "little")]
    tools = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}
    try:
        # one stream each: the kernel build appends the 4-byte size, which the one-shot decompressors would take
        # for the start of a second stream and reject
        if payload[:2] == b"\x1f\x8b":
            elf = zlib.decompressobj(wbits=31).decompress(payload)
        elif payload[:6] == b"\xfd7zXZ\x00":
            elf = lzma.LZMADecompressor().decompress(payload)
        elif payload[:4] in tools and shutil.which(tools[payload[:4]]):
            # lz4 exits 1 at the 4-byte size the kernel build appends; the size check below is what counts
            elf = subprocess.run([tools[payload[:4]], "-d", "-c", "-q"], input=payload, capture_output=True,
                                 check=False, timeout=300).stdout
        else:
            return None
    except (OSError, EOFError, lzma.LZMAError, zlib.error, subprocess.SubprocessError):
        return None
    if len(elf) != int.from_bytes(payload[-4:], "little") or not _has_pvh_note(elf):
        return None
    out.write_bytes(elf)
    return out


def _has_pvh_note(elf: bytes) -> bool:
    """Does this ELF64 have a ``Xen`` note of type 18 (``XEN_ELFNOTE_PHYS32_ENTRY``) in a PT_NOTE segment?"""
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, phentsize, phnum = (int.from_bytes(elf[0x20:0x28], "little"), int.from_bytes(elf[0x36:0x38], "little"),
                               int.from_bytes(elf[0x38:0x3A], "little"))
    for i in range(phnum):
        header = elf[phoff + i * phentsize: phoff + (i + 1) * phentsize]
        if int.from_bytes(header[0:4], "little") != 4:  # PT_NOTE
            continue
        offset, size = int.from_bytes(header[8:16], "little"), int.from_bytes(header[32:40], "little")
        pos, end = offset, offset + size
        while pos + 12 <= end:
            namesz, descsz, kind = (int.from_bytes(elf[pos + k:pos + k + 4], "little") for k in (0, 4, 8))
            name = elf[pos + 12:pos + 12 + namesz]
            if name == b"Xen\x00" and kind == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _depends(module: Path) -> list[str]:
    out = _run(["modinfo", "-F", "depends", str(module)]).strip()
    return [name.replace("-", "_") for name in out.split(",") if name]


def load_order(wanted: list[str], available: dict[str, Path]) -> list[str]:
    """``wanted`` plus their dependencies, dependencies first (a depth-first topological sort)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        visiting.add(name)
        for dep in _depends(available[name]):
            if dep in available:
                visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        key = name.replace("-", "_")
        if key in available:
            visit(key)
    return order


@dataclass(frozen=True)
class ExtractedKernel:
    """The kernel image and the modules (in load order) taken from the package.

    ``on_demand`` maps a group name to modules the guest loads only when it needs them (in load order, without
    those ``modules`` already loads at boot); ``builtin`` lists wanted modules (of either kind) built into the kernel.
    """

    vmlinuz: Path
    modules: list[Path]
    builtin: list[str]
    on_demand: dict[str, list[Path]] = field(default_factory=dict)


def extract_kernel(deb: Path, workdir: Path, wanted_modules: list[str],
                   on_demand: dict[str, list[str]] | None = None) -> ExtractedKernel:
    """Unpack ``deb`` and keep the kernel image plus ``wanted_modules`` and their dependencies.

    A wanted module that is built into the kernel (listed in ``modules.builtin``) is simply not needed.

    :param on_demand: group name -> modules (same syntax as ``wanted_modules``) the guest loads later.
    """
    root = workdir / "pkg"
    _run(["dpkg-deb", "-x", str(deb), str(root)])
    # Ubuntu ships the modules (and modules.builtin) in linux-modules-X, fetched next to the image package.
    for extra in sorted(deb.parent.glob(f"{modules_package(package_of(deb).name)}_*.deb")):
        _run(["dpkg-deb", "-x", str(extra), str(root)])
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise VlabError(
            f"{deb.name} holds no boot/vmlinuz-*", field="VLAB_KERNEL_PACKAGE", fix="use a linux-image package"
        )
    # /lib/modules (Debian 12, Ubuntu 24.04) or /usr/lib/modules (merged-/usr packages: Debian 13, Ubuntu 25.04).
    trees = sorted([*(root / "lib" / "modules").glob("*"), *(root / "usr" / "lib" / "modules").glob("*")])
    available = _module_files(trees[0]) if trees else {}
    builtin_file = trees[0] / "modules.builtin" if trees else None
    builtin_text = builtin_file.read_text() if builtin_file and builtin_file.exists() else ""
    builtin = {Path(line).name.split(".ko")[0].replace("-", "_") for line in builtin_text.split()}
    plain = workdir / "modules"
    plain.mkdir(exist_ok=True)
    groups = {"": wanted_modules, **(on_demand or {})}
    ordered: dict[str, list[Path]] = {}
    found_builtin: set[str] = set()
    for group, names in groups.items():
        source = "vm-images/linux/modules" + (f"-{group}" if group else "")
        # "name?" in the list marks a module the guest can live without (e.g. the ACPI button on a minimal flavour).
        wanted = [(m.rstrip("?").replace("-", "_"), m.endswith("?")) for m in names]
        missing = [name for name, optional in wanted if name not in available and name not in builtin and not optional]
        if missing:
            raise VlabError(
                f"the kernel package has no module {', '.join(missing)}",
                field=source,
                value=deb.name,
                fix="use a kernel flavour that has them (VLAB_KERNEL_PACKAGE), or mark them optional with a "
                "trailing ?",
            )
        present = [name for name, _ in wanted if name in available]
        at_boot = {path.stem for path in ordered.get("", [])}
        ordered[group] = [_decompressed(available[name], plain / f"{name}.ko")
                          for name in load_order(present, available) if name not in at_boot]
        found_builtin |= {name for name, _ in wanted if name in builtin}
    boot = ordered.pop("")
    return ExtractedKernel(images[0], boot, sorted(found_builtin), ordered)
