"""Which accelerator a VM can really use, and why.

``/dev/kvm`` existing does not mean hardware virtualization: a host may run a
*software* hypervisor behind the same device (the ``kvm_pvm`` module, with no
``vmx``/``svm`` CPU flag) on which a stock Linux guest never reaches userspace.
And QEMU's ``-accel kvm -accel tcg`` falls back only when KVM fails to *start*,
not when the guest then fails, so the decision must be made before launch.

The classification, from the cheapest evidence to the most expensive:

1. no ``/dev/kvm`` → ``NONE`` (Binder, containers): TCG.
2. ``/dev/kvm`` but a PVM module loaded, or no ``vmx``/``svm`` flag →
   ``SOFTWARE``: TCG, and say so.
3. ``vmx``/``svm`` and ``kvm_intel``/``kvm_amd`` loaded → ``HARDWARE``; it is
   *usable* only if ``/dev/kvm`` opens and, when asked, a probe guest boots.

:func:`vlab.qemu.accel.choose_accel` derives a VM's ``-accel`` (:class:`vlab.qemu.AccelChoice`) from this
verdict; :func:`detect_accelerator` is the only place it is cached.
"""

from __future__ import annotations

import enum
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["AccelKind", "AccelInfo", "classify", "detect_accelerator", "probe_guest"]


class AccelKind(enum.Enum):
    """What sits behind ``/dev/kvm``."""

    HARDWARE = "hardware-kvm"
    SOFTWARE = "software-kvm"
    NONE = "none"


@dataclass(frozen=True)
class AccelInfo:
    """The accelerator verdict: ``accel`` is what QEMU gets (``kvm`` or ``tcg``), ``reason`` says why."""

    kind: AccelKind
    usable_kvm: bool
    reason: str
    cpu_flags: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    probe_seconds: float | None = None

    @property
    def accel(self) -> Literal["kvm", "tcg"]:
        return "kvm" if self.usable_kvm else "tcg"


_HW_MODULES = ("kvm_intel", "kvm_amd")
_SW_MODULES = ("kvm_pvm",)


def _cpu_flags(root: Path) -> set[str]:
    try:
        text = (root / "proc" / "cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _loaded(root: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if (root / "sys" / "module" / name).exists()]


def classify(root: Path = Path("/")) -> AccelInfo:
    """Classify the accelerator from ``root``'s ``/dev``, ``/proc`` and ``/sys`` alone (no probe guest)."""
    flags = tuple(sorted(_cpu_flags(root) & {"vmx", "svm", "hypervisor"}))
    hw, sw = _loaded(root, _HW_MODULES), _loaded(root, _SW_MODULES)
    modules = tuple(hw + sw)
    if not (root / "dev" / "kvm").exists():
        return AccelInfo(
            AccelKind.NONE, False, "no /dev/kvm on this host: using TCG (software emulation)", flags, modules
        )
    if sw:
        return AccelInfo(
            AccelKind.SOFTWARE,
            False,
            f"/dev/kvm is a software hypervisor (module {sw[0]}), not hardware virtualization; "
            "stock Linux guests do not boot on it: using TCG",
            flags,
            modules,
        )
    if not ({"vmx", "svm"} & set(flags)) or not hw:
        missing = "no vmx/svm CPU flag" if not ({"vmx", "svm"} & set(flags)) else "no kvm_intel/kvm_amd module"
        return AccelInfo(
            AccelKind.SOFTWARE,
            False,
            f"/dev/kvm exists but {missing}: not hardware virtualization: using TCG",
            flags,
            modules,
        )
    if root == Path("/") and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelInfo(
            AccelKind.HARDWARE,
            False,
            "hardware KVM is present but /dev/kvm is not accessible to this user "
            "(fix: add yourself to the kvm group): using TCG",
            flags,
            modules,
        )
    return AccelInfo(AccelKind.HARDWARE, True, f"hardware KVM ({hw[0]}, {'/'.join(flags)}): using KVM", flags, modules)


def probe_argv() -> list[str] | None:
    """The probe's command line: the built default guest under KVM (None when the images are not built).

    It comes from :meth:`vlab.qemu.config.VMConfig.qemu_argv`, so the probe boots exactly what a VM would.
    """
    from vlab.errors import VlabError
    from vlab.qemu.config import VMConfig  # lazy: vlab.qemu imports vlab.host

    try:
        config = VMConfig(name="kvm-probe", accel="kvm", balloon=False, append="console=ttyS0 quiet")
    except VlabError:
        return None
    return config.qemu_argv(accel="kvm")


def probe_guest(argv: list[str], timeout: float = 20.0) -> float | None:
    """Run ``argv`` (a guest with its console on stdout) and return seconds to its ready marker, or None."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        return None
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    try:
        while time.monotonic() - start < timeout and proc.poll() is None:
            chunk = proc.stdout.read() or b""
            seen = (seen + chunk)[-4096:]
            if b"VLAB-READY" in seen:
                return time.monotonic() - start
            time.sleep(0.05)
        return None
    finally:
        proc.kill()
        proc.wait()


_cached: dict[bool, AccelInfo] = {}


def detect_accelerator(probe: bool = True) -> AccelInfo:
    """The host's accelerator verdict (cached per process).

    :param probe: when the host looks like hardware KVM, also boot the built guest under KVM and call KVM usable
        only if it reaches its ready marker (skipped when the images are not built).
    """
    if probe in _cached:
        return _cached[probe]
    info = classify()
    if probe and info.usable_kvm:
        argv = probe_argv()
        if argv is not None:
            seconds = probe_guest(argv)
            if seconds is None:
                info = AccelInfo(
                    AccelKind.HARDWARE,
                    False,
                    "hardware KVM is present but the probe guest did not boot on it: using TCG",
                    info.cpu_flags,
                    info.modules,
                )
            else:
                info = AccelInfo(
                    info.kind,
                    True,
                    info.reason + f" (probe guest ready in {seconds:.2f} s)",
                    info.cpu_flags,
                    info.modules,
                    seconds,
                )
    _cached[probe] = info
    return info
