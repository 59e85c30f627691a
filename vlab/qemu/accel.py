"""Choosing QEMU's accelerator before launch: hardware KVM only where it really works, else TCG.

``-accel kvm -accel tcg`` falls back only when KVM fails to *start*; on a
software hypervisor behind ``/dev/kvm`` (e.g. ``kvm_pvm``) KVM starts and the
guest then never boots. So the choice is made up front: an :class:`AccelChoice`
(``vm.accel``) is derived from the host's verdict, :class:`vlab.host.AccelInfo`
(:func:`vlab.host.accel.detect_accelerator`, which holds the one cache), and the
accelerator the VM's config asks for. Nothing here assumes KVM is faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlab.errors import VlabError
from vlab.host.accel import AccelInfo, detect_accelerator

__all__ = ["AccelChoice", "choose_accel"]


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator a VM uses (``"tcg"`` or ``"kvm"``) and why.

    :ivar host: the host verdict it was derived from (None for ``accel="tcg"``, which needs no probe).
    """

    kind: Literal["tcg", "kvm"]
    reason: str
    host: AccelInfo | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.kind} ({self.reason})"


def choose_accel(requested: str) -> AccelChoice:
    """Resolve ``auto``/``tcg``/``kvm`` into the accelerator to launch with.

    :raises VlabError: if ``kvm`` is requested where the probe says it does not work.
    """
    if requested == "tcg":
        return AccelChoice("tcg", "requested accel='tcg'")
    host = detect_accelerator()
    if requested == "kvm":
        if not host.usable_kvm:
            raise VlabError(f"KVM is not usable here ({host.kind.value}: {host.reason})", field="accel",
                            value="kvm", fix='use accel="auto" or accel="tcg" (run `vlab doctor` for details)')
        return AccelChoice("kvm", f"requested accel='kvm'; host probe: {host.reason}", host)
    return AccelChoice(host.accel, host.reason, host)  # the verdict's reason already says which one and why
