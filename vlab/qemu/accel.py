"""Choosing QEMU's accelerator before launch: hardware KVM only where it really works, else TCG.

``-accel kvm -accel tcg`` falls back only when KVM fails to *start*; on a
software hypervisor behind ``/dev/kvm`` (e.g. ``kvm_pvm``) KVM starts and the
guest then never boots. So the choice is made up front from the host probe in
:func:`vlab.host.accel.detect_accelerator`, and recorded with its reason in
:class:`AccelChoice` (``vm.accel``). Nothing here assumes KVM is faster.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from vlab.errors import VlabError

__all__ = ["AccelChoice", "choose_accel"]


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator a VM uses (``"tcg"`` or ``"kvm"``) and why."""

    kind: Literal["tcg", "kvm"]
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.reason})"


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[bool, str, str]:
    """(usable_kvm, kind, reason) from the host probe, cached: the host does not change under us."""
    from vlab.host.accel import detect_accelerator

    info = detect_accelerator()
    kind = getattr(info.kind, "value", info.kind)  # AccelKind enum: "hardware-kvm", "software-kvm", "none"
    return bool(info.usable_kvm), str(kind), str(info.reason)


def choose_accel(requested: str) -> AccelChoice:
    """Resolve ``auto``/``tcg``/``kvm`` into the accelerator to launch with.

    :raises VlabError: if ``kvm`` is requested where the probe says it does not work.
    """
    if requested == "tcg":
        return AccelChoice("tcg", "requested accel='tcg'")
    usable, kind, reason = _probe()
    if requested == "kvm":
        if not usable:
            raise VlabError(f"KVM is not usable here ({kind}: {reason})", field="accel", value="kvm",
                            fix='use accel="auto" or accel="tcg" (run `vlab doctor` for details)')
        return AccelChoice("kvm", f"requested accel='kvm'; host probe: {reason}")
    if usable:
        return AccelChoice("kvm", f"hardware KVM works here ({reason})")
    return AccelChoice("tcg", reason)  # the probe's reason already says what it found and that TCG is used
