"""Real VMs from Python: QEMU driven over QMP and its serial console.

Architecture (one module per concern):

* :mod:`~vlab.qemu.config` — :class:`VMConfig` (validated; the classic ``vm.conf``; :meth:`VMConfig.qemu_argv`;
  ``machine="auto"``: cold boots on ``-M microvm`` where the devices allow, :meth:`VMConfig.boot_machine`).
* :mod:`~vlab.qemu.vm` — :class:`VM`: states, start/stop, QMP helpers, snapshots, balloon, migration.
* :mod:`~vlab.qemu.loop` — vlab's private asyncio loop in a daemon thread (so the sync API works in Jupyter).
* :mod:`~vlab.qemu.qmp` — a ``qemu.qmp`` client per VM on that loop, errors as :class:`~vlab.errors.VlabError`,
  an event log.
* :mod:`~vlab.qemu.console` — the serial console: ready marker, ``run(cmd) -> CommandResult``, output tail.
* :mod:`~vlab.qemu.process` — spawning QEMU so it dies with its owner (``PR_SET_PDEATHSIG``, pidfile sweep).
* :mod:`~vlab.qemu.disks` — qcow2 overlays and LUKS-encrypted images via ``qemu-img``.
* :mod:`~vlab.qemu.network` — bridged NICs: taps on bridges inside vlab-made network namespaces.
* :mod:`~vlab.qemu.migration` — live migration figures (:class:`MigrationResult`).
* :mod:`~vlab.qemu.metrics` — what the host sees: per-vCPU CPU time, QEMU's RSS.
* :mod:`~vlab.qemu.template` — snapshot templates: a booted, idle guest saved once per hardware, which
  :meth:`VM.start` restores by default (``start(cold=True)``, ``VMConfig(cold_boot=True)`` or
  ``VLAB_COLD_BOOT=1`` boot the kernel instead).
* :mod:`~vlab.qemu.individualize` — a restored guest made this VM's: hot-plugged disks and NICs, hostname,
  addresses, clock, fresh randomness.
* :mod:`~vlab.qemu.accel` — TCG or KVM, decided before launch, with the reason.
* :mod:`~vlab.qemu.fields` — validators for every public field and argument (one error shape).
* :mod:`~vlab.qemu.guest_files` — the kernel and initramfs checked against the image manifest at start.
* :mod:`~vlab.qemu.cli` — ``vlab vm run`` / ``vlab vm argv``.

What a VM may do to its host (see the modules for the why):

* Every ``-object``/``-blockdev``/``-netdev``/``-device`` is QEMU's JSON form: no value can add an option.
* A user-mode NIC is ``restrict=on``: the guest reaches neither the host's services (``127.0.0.1`` through the
  gateway) nor the internet. ``Nic(outbound=True)`` opts in; ``VLAB_DENY_OUTBOUND=1`` (set by the grader)
  refuses that opt-in and raw network options in ``extra_args``.
* Sockets and pidfiles live in a runtime directory vlab verifies (ours, 0700, not a symlink); the orphan
  sweeper kills only QEMUs provably started by vlab for this user. Passphrases (any bytes) reach QEMU and
  ``qemu-img`` only through inherited mode-0600 memfds, never a command line or a named file.
* Every call that talks to QEMU takes a ``timeout`` and raises :class:`~vlab.errors.VlabError` when it expires.

Quick start::

    import vlab
    with vlab.VM() as vm:                      # the built default guest, TCG unless hardware KVM works
        print(vm.console.run("uname -r"))
        print(vm.status(), vm.vcpus(), vm.memory())
"""

from __future__ import annotations

from vlab.qemu.accel import AccelChoice
from vlab.qemu.config import READY_MARKER, Disk, Nic, VMConfig, default_initrd, default_kernel, parse_size_mib
from vlab.qemu.console import CommandResult, Console
from vlab.qemu.metrics import HostSample
from vlab.qemu.migration import MigrationResult, MigrationTimeout
from vlab.qemu.qmp import Event
from vlab.qemu.vm import VM, BootTimeout, MemoryInfo, VCpuThread, VMState

__all__ = [
    "READY_MARKER",
    "VM",
    "AccelChoice",
    "BootTimeout",
    "CommandResult",
    "Console",
    "Disk",
    "Event",
    "HostSample",
    "MemoryInfo",
    "MigrationResult",
    "MigrationTimeout",
    "Nic",
    "VCpuThread",
    "VMConfig",
    "VMState",
    "default_initrd",
    "default_kernel",
    "parse_size_mib",
]
