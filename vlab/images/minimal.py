"""The optional minimal guest kernel (``vlab images build --kernel minimal``), compiled from Debian's source.

The default guest boots Debian's stock cloud kernel (:mod:`vlab.images.kernel`). A course that wants a
sub-second cold boot builds this flavour instead: ``make tinyconfig`` of Debian's ``linux-source-6.1`` package,
merged with the checked-in fragment ``vm-images/linux/minimal.config`` (exactly what vlab's guests use, all
built in: no modules) by the kernel's ``scripts/kconfig/merge_config.sh`` and ``make olddefconfig``, then
``make bzImage`` on every CPU (4–5 minutes on 2 cores). The PVH ELF that ``-M microvm`` enters is the
bzImage's own payload (:func:`vlab.images.kernel.pvh_elf`), exactly as for the stock kernel.

*Optional*: its build dependencies (:data:`BUILD_DEPS`) are not in ``binder/apt.txt``; :func:`require_build_deps`
names the ``apt-get install`` line for what is missing.

*Reproducible*: the build's timestamp, user, host and build number are pinned (``KBUILD_BUILD_*``) and the tree
is built in place (relative paths only), so the same source package, fragment and compiler give the same bytes.
A ``--force`` rebuild compares its bytes with the cached kernel's and records the answer (``reproduced``).

*Cached*: the kernel lives in ``<image cache>/kernels/minimal-<key>/`` (:func:`kernel_key`: source package
version, fragment hash, compiler version, recipe version); a build with the same inputs is a cache hit. The
work happens in a ``.build-*`` directory beside it, renamed into place when complete: a killed build leaves
only that directory, which the next build (under the cache's lock) removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.images import kernel
from vlab.images.manifest import sha256_file
from vlab.paths import vm_images_src

__all__ = ["BUILD_DEPS", "CachedKernel", "FRAGMENT", "SOURCE_PACKAGE", "build_kernel", "check_merged", "current_inputs",
           "find_cached", "fragment_settings", "kernel_key", "missing_packages", "require_build_deps"]

#: Debian's kernel source package: its tarball is what is compiled (the fragment is written for 6.1)
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: the config fragment, under vm-images/
FRAGMENT = "linux/minimal.config"
#: bump when the build steps below change what is built (the cache key includes it)
RECIPE = "tinyconfig+merge_config.sh -m+olddefconfig+bzImage/v1"
#: pinned so that the same inputs give the same bytes (the kernel prints them in its version string)
BUILD_ENV = {"KBUILD_BUILD_TIMESTAMP": "2000-01-01 00:00:00 UTC", "KBUILD_BUILD_USER": "vlab",
             "KBUILD_BUILD_HOST": "vlab", "KBUILD_BUILD_VERSION": "1", "ARCH": "x86_64", "LC_ALL": "C"}
#: Debian package -> what shows it is installed: a command on PATH or an absolute file
BUILD_DEPS: tuple[tuple[str, str], ...] = (
    (SOURCE_PACKAGE, str(SOURCE_TARBALL)),
    ("make", "make"),
    ("gcc", "gcc"),
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("perl", "perl"),
    ("xz-utils", "xz"),
    ("libelf-dev", "/usr/include/libelf.h"),  # objtool, built for every x86_64 kernel
    ("libssl-dev", "/usr/include/openssl/opensslv.h"),  # the kernel's host tools include it
)
KERNEL_NAME = "vmlinuz"
PVH_KERNEL_NAME = "vmlinux"
INFO_NAME = "build.json"
CONFIG_NAME = "config"

Report = Callable[[str], None]


def missing_packages(deps: tuple[tuple[str, str], ...] | None = None) -> list[str]:
    """The Debian packages of ``deps`` (default :data:`BUILD_DEPS`) whose command or file is not on this host."""
    return [package for package, probe in (BUILD_DEPS if deps is None else deps)
            if not (Path(probe).exists() if probe.startswith("/") else shutil.which(probe))]


def require_build_deps(deps: tuple[tuple[str, str], ...] | None = None) -> None:
    """VlabError with the exact ``apt-get install`` line when a build dependency is missing."""
    missing = missing_packages(deps)
    if missing:
        raise VlabError(
            f"building the minimal kernel needs {', '.join(missing)}, not installed (optional: not in binder/apt.txt)",
            field="--kernel", value="minimal",
            fix=f"sudo apt-get install -y {' '.join(missing)}   (or leave out --kernel minimal: the default "
                "stock kernel needs none of them)")


def fragment_settings(text: str) -> dict[str, str]:
    """``CONFIG_X`` -> value of a fragment or .config (``# CONFIG_X is not set`` is ``n``; other comments skipped)."""
    settings: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            settings[line[2:-len(" is not set")]] = "n"
        elif line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            if not sep or not name.startswith("CONFIG_") or not value or " " in name:
                raise VlabError(f"line {number} is not CONFIG_NAME=value", field=FRAGMENT, value=line,
                                fix="e.g. CONFIG_VIRTIO_BLK=y, or # CONFIG_X is not set")
            settings[name] = value
    return settings


def check_merged(fragment: str, config: str) -> None:
    """Every setting of ``fragment`` must be in the merged ``config``: Kconfig silently drops a symbol whose
    dependencies are off (CONFIG_VIRTIO_BLK without CONFIG_BLOCK), and that kernel would then not boot."""
    merged = fragment_settings(config)
    lost = [f"{name}={value} (got {merged.get(name, 'n')})" for name, value in fragment_settings(fragment).items()
            if merged.get(name, "n") != value]
    if lost:
        raise VlabError(f"the merged kernel config lost {len(lost)} setting(s) of the fragment: {'; '.join(lost)}",
                        field=FRAGMENT, value=lost[0].split(" ")[0],
                        fix="also enable what they depend on (the symbol's `depends on` in its Kconfig); a "
                            "symbol without a prompt cannot be set at all: drop its line")


def source_version() -> str:
    """The installed version of :data:`SOURCE_PACKAGE` (dpkg's word for it)."""
    shown = subprocess.run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE], capture_output=True, text=True,
                           check=False)
    if shown.returncode != 0 or not shown.stdout.strip():
        require_build_deps(((SOURCE_PACKAGE, "/nonexistent"),))
    return shown.stdout.strip()


def _gcc_version() -> str:
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "missing"


def kernel_key(version: str, fragment: bytes, compiler: str) -> str:
    """The cache key: everything the kernel's bytes depend on (source, fragment, compiler, recipe)."""
    digest = hashlib.sha256()
    for part in (SOURCE_PACKAGE, version, hashlib.sha256(fragment).hexdigest(), compiler, RECIPE):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedKernel:
    """A built minimal kernel in the cache: its directory, files and ``build.json`` (``hit``: found, not built)."""

    directory: Path
    info: dict[str, Any]
    hit: bool

    @property
    def vmlinuz(self) -> Path:
        return self.directory / KERNEL_NAME

    @property
    def vmlinux(self) -> Path:
        return self.directory / PVH_KERNEL_NAME


def current_inputs() -> tuple[str, dict[str, str]]:
    """The cache key of the minimal kernel this host would build now, and the inputs it hashes."""
    fragment = (vm_images_src() / FRAGMENT).read_bytes()
    version, compiler = source_version(), _gcc_version()
    inputs = {"source_package": SOURCE_PACKAGE, "source_version": version,
              "fragment_sha256": hashlib.sha256(fragment).hexdigest(), "compiler": compiler, "recipe": RECIPE}
    return kernel_key(version, fragment, compiler), inputs


def find_cached(cache: Path, key: str) -> CachedKernel | None:
    """The cached kernel for ``key`` when its files still match their recorded checksums, else None."""
    directory = cache / f"minimal-{key[:16]}"
    try:
        info = json.loads((directory / INFO_NAME).read_text())
        ok = info["key"] == key and all(sha256_file(directory / name) == info["sha256"][name]
                                        for name in (KERNEL_NAME, PVH_KERNEL_NAME))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CachedKernel(directory, info, hit=True) if ok else None


def _make(srctree: Path, log: Path, *targets: str, env: dict[str, str]) -> None:
    with log.open("a") as out:
        done = subprocess.run(["make", "-C", str(srctree), *targets], stdout=out, stderr=subprocess.STDOUT,
                              env=env, check=False)
    if done.returncode != 0:
        raise VlabError(f"make {' '.join(targets)} failed (exit {done.returncode})", field="--kernel",
                        value="minimal", fix="read the log tail below; a missing tool is named there",
                        detail=log.read_text(errors="replace")[-3000:])


def build_kernel(cache: Path, report: Report, *, force: bool = False) -> CachedKernel:
    """The minimal kernel from the cache, built first when missing (or when ``force``).

    The caller holds the cache directory's lock (:func:`vlab.images.build._locked`), which also removes a killed
    build's ``.build-*`` leftovers.
    """
    require_build_deps()
    key, inputs = current_inputs()
    found = find_cached(cache, key)
    if found is not None and not force:
        report(f"minimal kernel: cache hit ({found.directory.name})")
        return found
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        work = Path(tmp)
        src, stage, log = work / "src", work / "stage", work / "build.log"
        src.mkdir()
        stage.mkdir()
        started = time.monotonic()
        report(f"minimal kernel: unpacking {SOURCE_TARBALL.name} ({inputs['source_version']})")
        unpacked = subprocess.run(["tar", "-xJf", str(SOURCE_TARBALL), "-C", str(src), "--strip-components=1"],
                                  capture_output=True, text=True, check=False)
        if unpacked.returncode != 0:
            raise VlabError("the kernel source tarball cannot be unpacked", field=SOURCE_PACKAGE,
                            value=str(SOURCE_TARBALL), fix=f"sudo apt-get install --reinstall -y {SOURCE_PACKAGE}",
                            detail=unpacked.stderr[-2000:])
        env = {**os.environ, **BUILD_ENV}
        fragment = vm_images_src() / FRAGMENT
        report("minimal kernel: make tinyconfig + vm-images/linux/minimal.config")
        _make(src, log, "tinyconfig", env=env)
        # -m: merge only (no alldefconfig pass of its own); olddefconfig then resolves the new dependencies
        merged = subprocess.run([str(src / "scripts" / "kconfig" / "merge_config.sh"), "-m", ".config", str(fragment)],
                                cwd=src, capture_output=True, text=True, env=env, check=False)
        if merged.returncode != 0:
            raise VlabError("merge_config.sh failed", field=FRAGMENT, fix="check the fragment's syntax",
                            detail=(merged.stdout + merged.stderr)[-2000:])
        _make(src, log, "olddefconfig", env=env)
        config = (src / ".config").read_text()
        check_merged(fragment.read_text(), config)
        jobs = len(os.sched_getaffinity(0))
        report(f"minimal kernel: make -j{jobs} bzImage (4–5 min on 2 cores; log in {log})")
        _make(src, log, f"-j{jobs}", "bzImage", env=env)
        shutil.copyfile(src / "arch" / "x86" / "boot" / "bzImage", stage / KERNEL_NAME)
        # the PVH ELF is the bzImage's payload (stripped vmlinux), as for the stock kernel
        if kernel.pvh_elf(stage / KERNEL_NAME, stage / PVH_KERNEL_NAME) is None:
            raise VlabError("the built kernel has no PVH entry", field=FRAGMENT, value="CONFIG_PVH",
                            fix="keep CONFIG_PVH=y (and CONFIG_HYPERVISOR_GUEST=y) in the fragment")
        (stage / CONFIG_NAME).write_text(config)
        sha = {name: sha256_file(stage / name) for name in (KERNEL_NAME, PVH_KERNEL_NAME, CONFIG_NAME)}
        info: dict[str, Any] = {"key": key, **inputs, "build_env": BUILD_ENV, "jobs": jobs,
                                "build_seconds": round(time.monotonic() - started, 1), "sha256": sha}
        if found is not None:  # --force over a cached build: same inputs, so the bytes must match
            info["reproduced"] = found.info["sha256"] == sha
            info["previous_sha256"] = found.info["sha256"]
        (stage / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        final = cache / f"minimal-{key[:16]}"
        if final.exists():  # only with --force: move the old build aside, then away (each step a rename)
            old = work / "previous"
            os.replace(final, old)
        os.replace(stage, final)
    return CachedKernel(final, info, hit=False)
