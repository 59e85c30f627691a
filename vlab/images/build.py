"""``vlab images build``: the guest images, from Debian packages only.

Steps: resolve and download the kernel package, keep the kernel and the needed
modules, compile the guest programs, stage and pack the busybox initramfs,
assemble the toy VMM's RISC-V guest programs, and write the manifest. Work
happens in a temporary directory next to the image directory; files are moved
into place only when all steps succeeded, and the temporary directory is
always removed.

A build is skipped when the manifest's *inputs key* (package versions and the
hashes of every recipe file) is unchanged and the files still match their
checksums.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vlab.errors import VlabError
from vlab.images import initramfs, kernel
from vlab.images.manifest import FileEntry, Manifest, sha256_file
from vlab.paths import images_dir, vm_images_src

__all__ = ["KERNEL_NAME", "INITRD_NAME", "BUILD_STEPS", "BuildResult", "build_images", "inputs_key"]

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initramfs.cpio.gz"
TOYVMM_DIR = "toyvmm"

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
    # Documentation (*.md) does not change what is built, so editing it does not trigger a rebuild.
    recipe = [p for p in sorted(src.rglob("*")) if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".md"]
    code = sorted(Path(__file__).parent.glob("*.py"))
    return recipe + code


def inputs_key(kernel_id: str) -> str:
    """Hash of everything the build reads: the kernel package, tool versions and recipe files."""
    digest = hashlib.sha256()
    digest.update(kernel_id.encode())
    for argv in (["busybox"], ["gcc", "--version"], ["riscv64-unknown-elf-as", "--version"]):
        digest.update(_tool_version(argv).encode())
    for path in _recipe_files():
        digest.update(str(path.relative_to(path.parents[1])).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _wanted_modules() -> list[str]:
    text = (vm_images_src() / "linux" / "modules").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


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
    """One build at a time per image directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
    extracted = kernel.extract_kernel(deb, workdir, _wanted_modules())
    shutil.copyfile(extracted.vmlinuz, stage / KERNEL_NAME)

    report("compiling the guest programs")
    programs_dir = workdir / "programs"
    programs_dir.mkdir()
    programs = [
        initramfs.compile_program(src, programs_dir / src.stem)
        for src in sorted((vm_images_src() / "linux" / "programs").glob("*.c"))
    ]

    report("packing the busybox initramfs")
    tree = workdir / "initramfs"
    initramfs.stage_tree(tree, init=vm_images_src() / "linux" / "init", modules=extracted.modules, programs=programs)
    initramfs.pack(tree, stage / INITRD_NAME)

    report("assembling the toy VMM guest programs")
    toy = _build_toyvmm(stage / TOYVMM_DIR)

    names = [KERNEL_NAME, INITRD_NAME, *(f"{TOYVMM_DIR}/{p.name}" for p in toy.values())]
    sources = {
        package.name: package.version,
        "busybox-static": _tool_version(["busybox"]),
        "gcc": _tool_version(["gcc", "--version"]),
    }
    if toy:
        sources["binutils-riscv64-unknown-elf"] = _tool_version(["riscv64-unknown-elf-as", "--version"])
    details = {
        "kernel_deb_sha256": sha256_file(deb),
        "kernel_fetched_via": fetched_via,
        "kernel_modules": [m.stem for m in extracted.modules],
        "builtin_modules": extracted.builtin,
        "guest_programs": [p.name for p in programs],
        "toyvmm_programs": sorted(toy),
    }
    return Manifest("", {n: FileEntry.of(stage, n) for n in names}, sources, details)


def build_images(directory: Path | None = None, *, force: bool = False, report: Report = print) -> BuildResult:
    """Build the guest images into ``directory`` (default :func:`vlab.paths.images_dir`).

    :param force: rebuild even when the inputs have not changed.
    :param report: called with a line of progress for each step.
    """
    target = directory or images_dir()
    with _locked(target), tempfile.TemporaryDirectory(dir=target, prefix=".build-") as tmp:
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


def _install(stage: Path, target: Path, manifest: Manifest) -> None:
    """Move the staged files into place (each by rename), then the manifest last."""
    for name in manifest.files:
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / name, dest)
    manifest.save(target)


def require_image(name: str, directory: Path | None = None) -> Path:
    """The path of a built image file, or a VlabError that says how to build it."""
    path = (directory or images_dir()) / name
    if not path.exists():
        raise VlabError(
            "the guest image has not been built",
            field="images",
            value=str(path),
            fix="run `vlab images build` (or ./setup.sh, which does it)",
        )
    return path
