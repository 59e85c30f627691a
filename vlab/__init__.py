"""vlab: a lab kit that teaches operating-system virtualization by doing it.

Architecture (one sub-package per concern):

* :mod:`vlab.host` — what the host machine can do: the accelerator's *real*
  kind (hardware KVM, a software hypervisor behind ``/dev/kvm``, or none),
  cgroups and namespaces. :mod:`vlab.doctor` reports it.
* :mod:`vlab.images` — guest images built from Debian packages (a kernel from
  the distribution's package, a busybox initramfs) with a checksummed manifest.
* :mod:`vlab.qemu` — real VMs: :class:`VMConfig` (including the classic
  ``vm.conf``) and :class:`VM`, QEMU driven over QMP with ``qemu.qmp``.
* :mod:`vlab.toyvmm` — a toy trap-and-emulate VMM on Unicorn (RISC-V guests).
* :mod:`vlab.measure`, :mod:`vlab.plots`, :mod:`vlab.dashboards` — statistics,
  plotly figures and ipywidgets panels for the labs.
* :mod:`vlab.grading` — the auto-grader: ``vlab assign`` and ``vlab grade``.

Heavy modules are imported on first use, so ``import vlab`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlab.errors import StateError, VlabError

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily, PEP 562)
_LAZY = {
    "VM": "vlab.qemu",
    "VMConfig": "vlab.qemu",
    "Machine": "vlab.toyvmm",
    "check": "vlab.grading",
    "seed_for": "vlab.grading",
}

__all__ = ["StateError", "VlabError", "__version__", *_LAZY]

if TYPE_CHECKING:
    from vlab.grading import check as check
    from vlab.grading import seed_for as seed_for
    from vlab.qemu import VM as VM
    from vlab.qemu import VMConfig as VMConfig
    from vlab.toyvmm import Machine as Machine


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
