"""``vlab doctor``: what this machine has for the labs, and how to fix what is missing.

Each check yields a :class:`Finding` (name, status, detail, fix). Status
``missing`` on a *required* part (QEMU, the guest images, the Python
dependencies) makes the exit status non-zero; optional parts (hardware KVM,
cgroups, namespaces, the RISC-V assembler) only inform.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from vlab.errors import VlabError
from vlab.host.accel import detect_accelerator
from vlab.host.cgroups import detect_cgroups
from vlab.host.namespaces import detect_namespaces
from vlab.host.packages import apt_install_command
from vlab.images.manifest import Manifest
from vlab.paths import images_dir

__all__ = ["Finding", "run_checks", "register", "PYTHON_DEPENDENCIES"]

PYTHON_DEPENDENCIES = (
    "jupyterlab",
    "ipywidgets",
    "unicorn",
    "capstone",
    "qemu.qmp",
    "plotly",
    "nbval",
    "nbclient",
    "tqdm",
    "dask",
    "distributed",
)


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    name: str
    status: str  # "ok", "missing" or "info"
    detail: str
    required: bool = False
    fix: str | None = None


def _apt_fix() -> str:
    """The install command for ``binder/apt.txt``, read now (the one package list); without the checkout, the
    VlabError's fix, which says where the list lives: the doctor reports, it does not stop."""
    try:
        return apt_install_command()
    except VlabError as exc:
        return exc.fix or exc.problem


def _qemu() -> Finding:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return Finding("qemu", "missing", "qemu-system-x86_64 not found", True, _apt_fix())
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return Finding("qemu", "ok", f"{out.splitlines()[0] if out else 'unknown version'} ({binary})", True)


def _accelerator() -> Finding:
    info = detect_accelerator(probe=True)
    return Finding("accelerator", "ok", f"{info.accel} [{info.kind.value}]: {info.reason}")


def _images() -> Finding:
    directory = images_dir()
    manifest = Manifest.load(directory)
    if manifest is None:
        return Finding("images", "missing", f"no guest images in {directory}", True, "vlab images build")
    problems = manifest.problems(directory)
    if problems:
        return Finding("images", "missing", f"{directory}: " + "; ".join(problems), True, "vlab images build --force")
    kernel = next((f"{k} {v}" for k, v in manifest.sources.items() if k.startswith("linux-image")), "?")
    return Finding("images", "ok", f"{len(manifest.files)} files in {directory}, checksums match ({kernel})", True)


def _assembler() -> Finding:
    if shutil.which("riscv64-unknown-elf-as"):
        return Finding("riscv-assembler", "ok", "riscv64-unknown-elf-as (toy VMM guest programs)")
    return Finding(
        "riscv-assembler",
        "missing",
        "riscv64-unknown-elf-as not found (needed to assemble snippets)",
        False,
        "sudo apt-get install binutils-riscv64-unknown-elf",
    )


def _cgroups() -> Finding:
    support = detect_cgroups()
    status = "ok" if support.usable else "info"
    fix = None if support.usable else "run as root on a host with cgroup controllers (lab parts skip otherwise)"
    return Finding("cgroups", status, support.describe(), False, fix)


def _namespaces() -> Finding:
    support = detect_namespaces()
    status = "ok" if support.available else "info"
    return Finding(
        "namespaces",
        status,
        support.describe(),
        False,
        None if support.available else "namespaces need root or unprivileged user namespaces",
    )


def _memory() -> Finding:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    available = int(meminfo.get("MemAvailable", "0 kB").split()[0]) // 1024
    total = int(meminfo.get("MemTotal", "0 kB").split()[0]) // 1024
    status = "ok" if available >= 1024 else "info"
    return Finding("memory", status, f"{available} MiB available of {total} MiB")


def _python() -> Finding:
    versions, missing = [], []
    for name in PYTHON_DEPENDENCIES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Finding("python", "missing", "missing: " + ", ".join(missing), True, "pip install -e .")
    return Finding("python", "ok", ", ".join(versions), True)


CHECKS = (_qemu, _accelerator, _images, _assembler, _cgroups, _namespaces, _memory, _python)


def run_checks() -> list[Finding]:
    """Run every check, in report order."""
    return [check() for check in CHECKS]


def failed(findings: list[Finding]) -> bool:
    return any(f.required and f.status == "missing" for f in findings)


def _print(findings: list[Finding]) -> None:
    marks = {"ok": "ok ", "missing": "!! ", "info": "-- "}
    for finding in findings:
        print(f"{marks[finding.status]} {finding.name:16} {finding.detail}")
        if finding.fix and finding.status != "ok":
            print(f"{'':20} fix: {finding.fix}")
    print("doctor: " + ("a required part is missing" if failed(findings) else "everything the labs need is here"))


def _main(args: argparse.Namespace) -> int:
    findings = run_checks()
    if args.json:
        print(json.dumps({"ok": not failed(findings), "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        _print(findings)
    return 1 if failed(findings) else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("doctor", help="report what this machine has for the labs (and how to fix it)")
    parser.add_argument("--json", action="store_true", help="emit JSON instead of text")
    parser.set_defaults(func=_main)
