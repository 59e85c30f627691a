"""``vlab.VM``: one QEMU guest with explicit states, driven over QMP and its serial console.

States and the operations that move between them::

    created --start()--> starting --(ready marker)--> running <--pause()/resume()--> paused
       |                     |                           |                              |
       |                     +--(error, Ctrl-C)--> failed  +-------- stop() -------------+--> stopped

Every public operation first checks the state (:class:`~vlab.errors.StateError`
for the wrong one) and refreshes it from the process: a QEMU that exited
behind vlab's back (the guest ran ``poweroff``, or QEMU crashed) turns the VM
``stopped`` or ``failed`` and releases its resources.

Launching (:meth:`VM.start`): sweep orphans of dead vlab processes, pick the
accelerator (:mod:`vlab.qemu.accel`), make a private workdir (overlays,
migration socket), create two socketpairs (QMP and ttyS0), taps and passphrase
memfds, fork QEMU with those fds (:mod:`vlab.qemu.process`), greet QMP, then wait for the
guest's ``VLAB-READY`` line and check the shell answers. Any failure or
interruption on the way kills QEMU and removes everything before re-raising.

Stopping (:meth:`VM.stop`) escalates, each step with its own timeout: ACPI
powerdown (the guest shuts down cleanly) → QMP ``quit`` → SIGTERM → SIGKILL.
"""

from __future__ import annotations

import atexit
import calendar
import contextlib
import enum
import logging
import os
import shutil
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vlab.errors import StateError, VlabError
from vlab.progress import Steps, steps
from vlab.qemu import disks, individualize, network, template
from vlab.qemu.accel import AccelChoice, choose_accel
from vlab.qemu.argv import ParsedArgv, RawQMP, parse_argv
from vlab.qemu.config import READY_MARKER, LaunchIO, Nic, VMConfig, parse_size_mib
from vlab.qemu.console import Console, ConsoleClosed
from vlab.qemu.fields import check_bool, check_int, check_seconds, check_text, check_token, shown
from vlab.qemu.guest_files import verify_guest_file
from vlab.qemu.metrics import HostSample, process_rss_bytes, sample
from vlab.qemu.migration import MigrationResult, run_migration, set_parameters
from vlab.qemu.process import QemuProcess, make_workdir, sweep_orphans
from vlab.qemu.qmp import DEFAULT_QMP_TIMEOUT, Event, QMPChannel
from vlab.qemu.template import Template, TemplateError

__all__ = ["VM", "VMState", "VCpuThread", "MemoryInfo", "BootTimeout", "GuestPanicked"]

_MIB = 1024 * 1024
log = logging.getLogger(__name__)
_VMSTATE_NODE = "vmstate"
_live_vms: weakref.WeakSet[VM] = weakref.WeakSet()


class VMState(enum.Enum):
    """The life of a :class:`VM`."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


_ACTIVE = (VMState.STARTING, VMState.RUNNING, VMState.PAUSED)


class BootTimeout(VlabError):
    """The guest never printed its ready marker (retried once by :meth:`VM.start`)."""


class GuestPanicked(BootTimeout):
    """The guest kernel panicked before it was ready (retried like a timeout)."""


@dataclass(frozen=True)
class VCpuThread:
    """A QEMU vCPU as QMP ``query-cpus-fast`` reports it: the host thread that runs it.

    Not to be confused with :class:`vlab.toyvmm.VCPU`, the toy VMM's emulated vCPU (its privileged state).
    """

    index: int
    thread_id: int
    qom_path: str
    target: str


@dataclass(frozen=True)
class MemoryInfo:
    """Guest memory from three viewpoints (bytes).

    :ivar configured: the RAM the guest was given (``-m``).
    :ivar balloon_actual: what the balloon leaves the guest (None without a balloon device).
    :ivar host_rss: QEMU's resident memory on the host.
    """

    configured: int
    balloon_actual: int | None
    host_rss: int


class VM:
    """A QEMU virtual machine.

    :param config: what to run; None means ``VMConfig(**overrides)`` (the default vlab guest).
    :param overrides: :class:`VMConfig` fields, e.g. ``VM(mem="512M", vcpus=2)``.

    Use it as a context manager so it is always stopped::

        with vlab.VM() as vm:           # start() on enter, stop() on exit
            print(vm.console.run("uname -r").output)
    """

    def __init__(self, config: VMConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = VMConfig(**overrides)
        elif not isinstance(config, VMConfig):
            raise VlabError(f"must be a VMConfig, not {type(config).__name__}", field="config",
                            value=shown(config), fix="vlab.VM(vlab.qemu.VMConfig(...)) or vlab.VM(mem='512M')")
        elif overrides:
            config = config.replace(**overrides)
        self.config = config
        self._state = VMState.CREATED
        self._state_lock = threading.RLock()
        self._process: QemuProcess | None = None
        self._console: Console | None = None
        self._qmp = QMPChannel(config.name, lambda: self._describe_failure(wait=2.0), self._on_event)
        self._qemu_stopped = False  # QEMU's vCPUs are stopped (STOP event seen, no RESUME since)
        self._stop_reason: str | None = None
        self._accel: AccelChoice | None = None
        self._bridges: list[str] = []
        self._macs: list[str] = []
        self._inherit_macs: list[str] = []  # a migration destination takes over its source's MACs
        self._inherit_machine: str | None = None  # ... and its machine (a restored source ran "pc")
        self._hardware: VMConfig = config  # config with the machine QEMU runs (machine="auto" resolved)
        self._vmstate_ready = False
        self._qmp_sock: socket.socket | None = None
        self._qmp_sync_sock: socket.socket | None = None
        self._incoming_uri = ""
        self._io: LaunchIO | None = None
        self._pci_slots: dict[str, int] = {}  # device id -> PCI slot, when devices must sit at given slots
        self._launch_overrides: dict[str, Any] = {}  # extra LaunchIO fields (a template build's RAM file)
        self._from_argv: ParsedArgv | None = None  # VM.from_argv: run these words, not config.qemu_argv()
        self._raw_qmp: RawQMP | None = None
        self.argv: list[str] = []
        #: "restored" (from a snapshot template) or "cold" (the kernel booted), once started
        self.start_mode: str | None = None
        #: why the VM booted cold, or what start() did to the template ("" when there is nothing to say)
        self.start_note = ""
        #: how start() ended the boot: seconds from launch to the ready marker, and attempts used
        self.boot_seconds: float | None = None
        self.boot_attempts = 0
        #: which step of stop() made QEMU exit ("powerdown", "quit", "SIGTERM", "SIGKILL", "exited")
        self.stopped_by: str | None = None

    def __repr__(self) -> str:
        return f"<VM {self.config.name!r} {self.state} pid={self.pid}>"

    @classmethod
    def from_argv(cls, argv: Sequence[str], *, name: str | None = None, nics: Sequence[Nic] = ()) -> VM:
        """A VM that runs *this* QEMU command line (e.g. one a student's ``conf_to_argv`` wrote).

        The argv is validated first (:func:`vlab.qemu.argv.parse_argv`): only the options a lab's VM needs are
        allowed, and ``-kernel``, ``-initrd`` and an ``-append`` with ``console=ttyS0`` are required, so a wrong
        argv is a :class:`VlabError` naming the word, never a QEMU that hangs or escapes. :meth:`start` runs the
        words as given (``-m`` in MiB, vlab's ``vlab.*`` words and ``panic=-1`` added to ``-append``) plus vlab's
        plumbing: console and QMP sockets, a raw QMP socket (:meth:`raw_qmp`), the ``nics``, ``-nodefaults
        -no-user-config -no-reboot -display none``; it always boots cold, under vlab's process handling
        (killed with its owner, swept if orphaned, stopped at exit). :attr:`argv` is the command that ran.

        :param name: the VM's name (default: the argv's ``-name``, else ``vlab``).
        :param nics: NICs vlab adds (an argv may not carry network options itself).
        :raises VlabError: for an argv vlab will not run, with the reason and the fix.
        """
        parsed = parse_argv(argv, name=name, nics=nics)
        vm = cls(parsed.config)
        vm._from_argv = parsed
        return vm

    # -- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> VMState:
        """The current state (refreshed: a QEMU that exited makes the VM stopped or failed)."""
        self._refresh()
        return self._state

    def _refresh(self) -> None:
        with self._state_lock:
            process = self._process
            if self._state in (VMState.RUNNING, VMState.PAUSED) and process and not process.alive():
                self.stopped_by = "exited"
                self._release()
                self._state = VMState.STOPPED if process.returncode == 0 else VMState.FAILED
            elif self._state in (VMState.RUNNING, VMState.PAUSED):
                # QEMU can stop the vCPUs by itself (a guest I/O error with on_error="stop"), or be told to
                # through vm.qmp("stop"/"cont"): its events say which
                self._state = VMState.PAUSED if self._qemu_stopped else VMState.RUNNING

    def _on_event(self, event: Event) -> None:
        """Track QEMU's run state from its events (called on the loop thread for every event)."""
        if event.name == "STOP":
            self._qemu_stopped = True
            if self._stop_reason is None:
                self._stop_reason = "QEMU stopped the vCPUs (QMP stop)"
        elif event.name == "RESUME":
            self._qemu_stopped = False
            self._stop_reason = None
        elif event.name == "BLOCK_IO_ERROR" and event.data.get("action") == "stop":
            device = event.data.get("node-name") or event.data.get("device") or "a disk"
            self._stop_reason = (f"I/O error on {device}: the guest's {event.data.get('operation', 'access')} "
                                 f"failed on the host ({event.data.get('reason', 'unknown reason')})")

    @property
    def pause_reason(self) -> str | None:
        """Why the VM is paused (``vm.pause()``, an I/O error on a disk, a migration…); None if it is not."""
        return self._stop_reason if self.state is VMState.PAUSED else None

    def _console_blocked(self) -> str | None:
        """For the console: why the guest cannot run commands now (None: it can)."""
        if not self._qemu_stopped:
            return None
        # Another QMP client's "cont" is answered to that client before its RESUME event reaches us. QEMU
        # sends a monitor's events and replies in order, so a query-status settles it.
        with contextlib.suppress(VlabError, OSError):
            if self._qmp.execute("query-status", None, 5.0)["running"]:
                return None
        return self._stop_reason or "paused"

    def _require(self, operation: str, *allowed: VMState) -> None:
        state = self.state
        if state not in allowed:
            fix = {VMState.CREATED: "call vm.start() first", VMState.STOPPED: "create a new VM: vlab.VM(config)",
                   VMState.FAILED: "create a new VM: vlab.VM(config)", VMState.PAUSED: "call vm.resume() first",
                   }.get(state)
            raise StateError(operation, state.value, [s.value for s in allowed], fix=fix)

    def _describe_failure(self, wait: float = 0.0) -> str:
        """QEMU's exit status and stderr tail; ``wait``: how long to let a dying QEMU finish exiting."""
        process = self._process
        if process is None:
            return "QEMU was not started"
        if wait or (self._console is not None and self._console.closed):
            process.wait(wait or 2.0)  # QEMU closes its sockets just before it exits: get its real exit status
        return process.describe_exit()

    @property
    def pid(self) -> int | None:
        """QEMU's process id (None before start)."""
        return self._process.pid if self._process else None

    @property
    def accel(self) -> AccelChoice:
        """The accelerator this VM uses (or will use) and why."""
        if self._accel is None:
            self._accel = choose_accel(self.config.accel)
        return self._accel

    @property
    def console(self) -> Console:
        """The guest's serial console (``vm.console.run("uptime")``)."""
        if self._console is None:
            raise StateError("use the console", self.state.value, [s.value for s in _ACTIVE],
                             fix="call vm.start() first")
        return self._console

    @property
    def machine(self) -> str:
        """The machine QEMU runs (or would run for a cold boot): ``pc``, ``q35`` or ``microvm``, with
        ``machine="auto"`` resolved (a VM restored from a template always runs ``pc``)."""
        return self._hardware.machine if self._hardware.machine != "auto" else self.config.boot_machine()

    @property
    def workdir(self) -> Path | None:
        """The VM's private directory (None when not running)."""
        return self._process.workdir if self._process else None

    # -- start ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0, retries: int = 1, wait_ready: bool = True, progress: bool = False,
              cold: bool | None = None) -> VM:
        """Launch QEMU and wait until the guest's shell answers.

        By default the VM is *restored* from a snapshot template of its hardware (built on first use, see
        :mod:`vlab.qemu.template`): its disks and NICs are hot-plugged and the guest gets its own hostname,
        addresses, clock and randomness (:mod:`vlab.qemu.individualize`), in about a tenth of a cold boot's
        time. :attr:`start_mode` says which happened and :attr:`start_note` why a VM booted cold.

        :param timeout: seconds to wait for the ready marker, per attempt.
        :param retries: boot attempts after a timeout or a kernel panic (a TCG boot very rarely hangs silently).
        :param wait_ready: if False, return as soon as QMP answers (the guest is still booting; watch it with
            ``vm.console.wait_for(vlab.qemu.READY_MARKER, …)``, and note the console still echoes input).
        :param progress: show the boot's steps (a bar in a notebook or terminal, a line per step in logs).
        :param cold: True: boot the kernel (what lab 01 measures). False: use a template even if the config or
            ``VLAB_COLD_BOOT`` asks for a cold boot. None (default): ``config.cold_boot`` and the environment
            decide. A VM that needs extra_args, runs on ``microvm``, or needs hot-plug on ``q35``, always boots
            cold. A cold boot of ``machine="auto"`` runs on ``microvm`` where it can (:attr:`machine` says).
        :raises VlabError: with the console tail and QEMU's stderr if the guest never becomes ready.
        """
        timeout = check_seconds("timeout", timeout)
        retries = check_int("retries", retries, 0, 10)
        check_bool("wait_ready", wait_ready)
        check_bool("progress", progress)
        self._require("start", VMState.CREATED)
        report = steps(2, f"booting {self.config.name}") if progress else None
        with report or contextlib.nullcontext():
            if self._from_argv is not None:
                self.start_note = "booted from an argv (VM.from_argv)"
            elif wait_ready and self._try_restore(timeout, cold, report):
                return self
            self.start_mode = "cold"
            for attempt in range(retries + 1):
                self.boot_attempts = attempt + 1
                try:
                    self._launch(incoming=False, timeout=timeout, wait_ready=wait_ready, report=report)
                    return self
                except BootTimeout:
                    if attempt == retries:
                        self._state = VMState.FAILED
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _try_restore(self, timeout: float, cold: bool | None, report: Steps | None) -> bool:
        """Start from a template if one can serve this VM; False (with :attr:`start_note` saying why) if not."""
        reason = template.cold_reason(self.config, cold)
        if reason is None:
            try:
                if report is not None:
                    report("finding the snapshot template")
                found, note = template.ensure(self.config, self.accel.kind, timeout=timeout)
                if report is not None:
                    report("restoring the snapshot template")
                self._restore(found, timeout)
                self.start_mode, self.start_note = "restored", note
                return True
            except TemplateError as exc:
                reason = f"{exc.problem} ({exc.value})" if exc.value is not None else exc.problem
                log.warning("%s boots cold: %s", self.config.name, reason)
            except BaseException:
                with self._state_lock:  # Ctrl-C or a bug: start() fails as a cold boot would
                    self._state = VMState.FAILED
                raise
        self.start_note = reason
        return False

    def _restore(self, found: Template, timeout: float) -> None:
        """Launch QEMU on the template's state, hot-plug the VM's devices, individualize the guest."""
        with self._state_lock:
            self._state = VMState.STARTING
            self._qemu_stopped, self._stop_reason = False, None
        self.boot_attempts = 1
        launched = time.monotonic()
        try:
            state_fd = os.open(found.state_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._spawn(False, min(10.0, timeout), restore=(found, state_fd))
            io = self._io
            assert io is not None
            template.load(self._execute, found, state_fd, timeout)
            individualize.hotplug(self._execute, self._hardware, io)
            self._qmp.execute("cont")
            with self._state_lock:
                self._state = VMState.RUNNING
            individualize.individualize(self.console, self.config, self._macs, timeout)
        except BaseException as exc:
            self._abort(VMState.CREATED)  # a cold boot follows
            self._pci_slots = {}
            if isinstance(exc, VlabError) and not isinstance(exc, TemplateError):
                raise TemplateError(f"restoring the template failed: {exc.problem}", field="template",
                                    value=found.key, fix="boot cold: vm.start(cold=True)",
                                    detail=str(exc)) from exc
            raise
        self.boot_seconds = time.monotonic() - launched
        _live_vms.add(self)

    def _launch(self, incoming: bool, timeout: float, wait_ready: bool = True, report: Steps | None = None) -> None:
        """One attempt: spawn, connect, wait for ready. Leaves nothing behind if it fails."""
        with self._state_lock:
            self._state = VMState.STARTING
            self._qemu_stopped, self._stop_reason = False, None
        launched = time.monotonic()
        try:
            if report is not None:
                report(f"launching QEMU ({self.accel.kind}), attempt {self.boot_attempts}")
            self._spawn(incoming, min(10.0, timeout))
            if not incoming and wait_ready:
                if report is not None:
                    report("waiting for the guest's ready line")
                self._wait_ready(timeout)
                self.boot_seconds = time.monotonic() - launched
        except BootTimeout:
            self._abort(VMState.CREATED)  # a fresh attempt may follow
            raise
        except BaseException:
            self._abort(VMState.FAILED)  # includes KeyboardInterrupt: kill QEMU, then re-raise
            raise
        with self._state_lock:
            self._state = VMState.STARTING if incoming else VMState.RUNNING
        _live_vms.add(self)

    def _spawn(self, incoming: bool, connect_timeout: float, restore: tuple[Template, int] | None = None) -> None:
        assert self.config.kernel is not None and self.config.initrd is not None
        if restore is not None:  # the template's hardware: pc, its devices hot-plugged over PCI
            self._hardware = self.config.replace(machine=template.base_config(self.config).machine)
        elif self._from_argv is None:
            self._hardware = self.config.replace(machine=self._inherit_machine or self.config.boot_machine())
        verify_guest_file("kernel", self._hardware.boot_kernel())
        verify_guest_file("initrd", self.config.initrd)
        sweep_orphans()
        network.sweep_orphan_namespaces()
        kind = self.accel.kind
        workdir = make_workdir()
        self._incoming_uri = f"unix:{workdir}/mig.sock"
        keep: list[int] = []  # fds only QEMU holds after the fork: closed here either way
        try:
            if restore is not None:
                keep.append(restore[1])
            io = self._prepare_io(workdir, keep, self._incoming_uri if incoming else None, restore)
            self._io = io
            if self._from_argv is not None:
                self.argv = self._from_argv.launch_argv(io, kind)
            elif restore is None:
                self.argv = self._hardware.qemu_argv(io, accel=kind)
            else:  # the template's exact hardware, under this VM's name; its devices are hot-plugged
                self.argv = template.base_config(self.config).qemu_argv(io, accel=kind)
                self.argv[self.argv.index("-name") + 1] = f"{self.config.name},debug-threads=on"
            self._process = QemuProcess(self.argv, workdir, keep)
        except BaseException:
            if self._process is None:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            for fd in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        assert self._qmp_sock is not None and self._qmp_sync_sock is not None
        self._qmp.connect(self._qmp_sock, self._qmp_sync_sock, timeout=connect_timeout)

    def _prepare_io(self, workdir: Path, keep: list[int], incoming: str | None,
                    restore: tuple[Template, int] | None = None) -> LaunchIO:
        qmp_ours, qmp_theirs = socket.socketpair()
        sync_ours, sync_theirs = socket.socketpair()
        console_ours, console_theirs = socket.socketpair()
        first = len(keep)
        keep += [qmp_theirs.detach(), console_theirs.detach(), sync_theirs.detach()]
        self._qmp_sock, self._qmp_sync_sock = qmp_ours, sync_ours
        self._console = Console(console_ours, self._describe_failure, self._console_blocked)
        disk_paths, secret_files = self._prepare_disks(workdir, keep)
        self._macs = network.claim_macs(self.config, self._inherit_macs)
        nic_fds: list[int | None] = []
        for nic in self.config.nics:
            if nic.mode == "bridge" and nic.bridge:
                tap = network.open_tap(nic.bridge)
                self._bridges.append(nic.bridge)
                keep.append(tap.fd)
                nic_fds.append(tap.fd)
            else:
                nic_fds.append(None)
        extra: dict[str, Any] = dict(self._launch_overrides)
        if self._from_argv is not None:
            extra["raw_qmp_path"] = workdir / "qmp-raw.sock"
        if restore is not None:
            self._pci_slots = template.restore_slots(self.config, restore[0])
            extra.update(memory_backend=restore[0].memory_backend(workdir), paused=True)
            incoming = "defer"  # capabilities first, then migrate-incoming from the state file's fd
        return LaunchIO(keep[first], keep[first + 1], disk_paths, secret_files, nic_fds, incoming,
                        qmp_sync_fd=keep[first + 2], macs=tuple(self._macs), pci_slots=dict(self._pci_slots),
                        **extra)

    def _prepare_disks(self, workdir: Path, keep: list[int]) -> tuple[list[Path], list[Path | None]]:
        paths: list[Path] = []
        secrets: list[Path | None] = []
        for i, disk in enumerate(self.config.disks):
            paths.append(disks.create_overlay(disk.path, workdir / f"disk{i}.qcow2") if disk.overlay else disk.path)
            if disk.secret is None:
                secrets.append(None)
                continue
            # a memfd QEMU inherits, not a file in the workdir: a kill -9 of Python and QEMU leaves no passphrase
            keep.append(disks.secret_fd(disk.secret))
            secrets.append(disks.secret_path(keep[-1]))
        return paths, secrets

    def _wait_ready(self, timeout: float) -> None:
        console = self.console
        try:
            console.wait_for(rf"(?m)^{READY_MARKER}\s*$", timeout)
        except ConsoleClosed:
            tail = console.tail(30)
            if "Kernel panic" in tail:  # e.g. a timer check failing under host load: worth another attempt
                raise GuestPanicked("the guest kernel panicked while booting", field="start",
                                    fix="retry; if it persists, check the kernel and append", detail=tail) from None
            raise
        except VlabError as exc:
            raise BootTimeout(f"the guest did not print {READY_MARKER} within {timeout} s",
                              field="start", value=timeout,
                              fix="retry with a longer timeout, or check the kernel/initrd and append",
                              detail=exc.detail) from None
        console.run("stty -echo", timeout=timeout)  # plain line input from here on; proves the shell answers

    def _abort(self, new_state: VMState) -> None:
        """Kill QEMU at once and release everything (a failed or interrupted start)."""
        if self._process is not None:
            self._process.kill()
            self.stopped_by = "SIGKILL"
        self._release()
        with self._state_lock:
            self._state = new_state

    # -- stop -----------------------------------------------------------------------------------------

    def stop(self, timeout: float = 3.0, graceful: bool = True) -> str:
        """Stop the VM, escalating: ACPI powerdown → QMP quit → SIGTERM → SIGKILL.

        :param timeout: seconds each step may take before the next one.
        :param graceful: try ACPI powerdown first (skipped when the guest is paused or still booting).
        :returns: the step that made QEMU exit (also in :attr:`stopped_by`); ``"not running"`` if it wasn't.
        """
        timeout = check_seconds("timeout", timeout, high=600.0)
        check_bool("graceful", graceful)
        with self._state_lock:
            state = self.state
            if state not in _ACTIVE:
                return "not running"
            process = self._process
            assert process is not None
            for step in self._stop_steps(graceful and state is VMState.RUNNING):
                if self._try_stop_step(step, process, timeout):
                    self.stopped_by = step
                    break
            else:
                process.kill()
                self.stopped_by = "SIGKILL"
            self._release()
            self._state = VMState.STOPPED
            return self.stopped_by

    @staticmethod
    def _stop_steps(graceful: bool) -> list[str]:
        return (["powerdown"] if graceful else []) + ["quit", "SIGTERM"]

    def _try_stop_step(self, step: str, process: QemuProcess, timeout: float) -> bool:
        try:
            if step == "powerdown":
                self._qmp.execute("system_powerdown", timeout=timeout)
            elif step == "quit":
                self._qmp.execute("quit", timeout=timeout)
            else:
                process.signal(signal.SIGTERM)
        except VlabError:
            pass  # QEMU may already be gone, or QMP wedged: the wait below decides
        return process.wait(timeout)

    def _release(self) -> None:
        """Close QMP and the console, remove the workdir and bridges (QEMU has exited or been killed)."""
        self._qmp.close()
        if self._raw_qmp is not None:
            self._raw_qmp.close()
            self._raw_qmp = None
        for sock in (self._qmp_sock, self._qmp_sync_sock):
            if sock is not None:
                sock.close()  # already closed by the QMP clients unless the connect never happened
        if self._console is not None:
            self._console.close()
        if self._process is not None:
            if self._process.alive():
                self._process.kill()
            self._process.remove_workdir()
        for bridge in self._bridges:
            network.release_bridge(bridge)
        self._bridges = []
        network.release_macs(self._macs)
        self._macs = []
        self._vmstate_ready = False
        _live_vms.discard(self)

    def kill(self) -> None:
        """SIGKILL QEMU now (no shutdown) and release everything."""
        with self._state_lock:
            if self._state in _ACTIVE:
                self._abort(VMState.STOPPED)

    def __enter__(self) -> VM:
        if self.state is VMState.CREATED:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- QMP ------------------------------------------------------------------------------------------

    def qmp(self, command: str, arguments: Mapping[str, Any] | None = None, *,
            timeout: float = DEFAULT_QMP_TIMEOUT, **args: Any) -> Any:
        """Run any QMP command and return QEMU's ``return`` value.

        Arguments go either as keywords, with ``_`` standing for QMP's ``-``
        (``vm.qmp("human-monitor-command", command_line="info mtree")``), or verbatim in ``arguments``
        (for the few commands whose argument names contain ``_``).

        :raises VlabError: if QEMU refuses the command (with its reason), dies, or does not answer in time.
        """
        check_seconds("timeout", timeout)
        arguments = _qmp_arguments(arguments, args)
        self._require(_checked_command(command), *_ACTIVE)
        return self._qmp.execute(command, arguments, timeout)

    async def aqmp(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                   timeout: float = DEFAULT_QMP_TIMEOUT, **args: Any) -> Any:
        """``await vm.aqmp("query-status")``: :meth:`qmp` for async code (any event loop, e.g. Jupyter's)."""
        check_seconds("timeout", timeout)
        arguments = _qmp_arguments(arguments, args)
        self._require(_checked_command(command), *_ACTIVE)
        return await self._qmp.aexecute(command, arguments, timeout)

    def raw_qmp(self, *, timeout: float = 5.0) -> RawQMP:
        """A fresh QMP session on the VM's spare monitor (VMs made by :meth:`from_argv` have one), in which
        the caller speaks the protocol: QEMU greets it and waits for ``qmp_capabilities``; vlab only frames the
        JSON (:meth:`RawQMP.send`: one object out, the next reply back, events skipped).

        Opening a new session closes the previous one (QEMU serves one client per monitor at a time).
        Use it as a context manager (``with vm.raw_qmp() as qmp:``) or close it.

        :param timeout: seconds for the greeting and for each reply.
        :raises VlabError: if the VM has no spare monitor, is not running, or QEMU does not greet in time.
        """
        timeout = check_seconds("timeout", timeout, high=120.0)
        self._require("raw_qmp", *_ACTIVE)
        if self._from_argv is None or self.workdir is None:
            raise VlabError("only a VM made by vlab.VM.from_argv has a spare QMP monitor", field="raw_qmp",
                            value=repr(self), fix="vm = vlab.VM.from_argv(argv); vm.start(); vm.raw_qmp()")
        if self._raw_qmp is not None:
            self._raw_qmp.close()
        self._raw_qmp = RawQMP(self.workdir / "qmp-raw.sock", lambda: self._describe_failure(wait=1.0), timeout)
        return self._raw_qmp

    def _execute(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        return self._qmp.execute(command, args)

    def status(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> str:
        """QEMU's run state: ``running``, ``paused``, ``io-error``, ``inmigrate``, ``postmigrate``…"""
        check_seconds("timeout", timeout)
        self._require("status", *_ACTIVE)
        return str(self._qmp.execute("query-status", None, timeout)["status"])

    def pause(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> None:
        """Stop the vCPUs (QMP ``stop``); the guest's clock and devices freeze."""
        check_seconds("timeout", timeout)
        self._require("pause", VMState.RUNNING)
        self._stop_reason = "paused by vm.pause()"
        self._qmp.execute("stop", None, timeout)
        self._qemu_stopped = True
        self._state = VMState.PAUSED

    def resume(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> None:
        """Run the vCPUs again (QMP ``cont``)."""
        check_seconds("timeout", timeout)
        self._require("resume", VMState.PAUSED)
        self._qmp.execute("cont", None, timeout)
        self._qemu_stopped, self._stop_reason = False, None
        self._state = VMState.RUNNING

    def vcpus(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> list[VCpuThread]:
        """The vCPUs with the host thread that runs each (``query-cpus-fast``)."""
        check_seconds("timeout", timeout)
        self._require("vcpus", *_ACTIVE)
        return [VCpuThread(int(c["cpu-index"]), int(c["thread-id"]), str(c["qom-path"]),
                           str(c.get("target", ""))) for c in self._qmp.execute("query-cpus-fast", None, timeout)]

    def memory(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> MemoryInfo:
        """Configured RAM, the balloon's current size and QEMU's RSS on the host."""
        budget = _Budget("memory", timeout)
        self._require("memory", *_ACTIVE)
        configured = int(self._qmp.execute("query-memory-size-summary", None, budget.left())["base-memory"])
        actual = int(self._qmp.execute("query-balloon", None, budget.left())["actual"]) \
            if self.config.balloon else None
        assert self.pid is not None
        return MemoryInfo(configured, actual, process_rss_bytes(self.pid))

    def balloon(self, target: int | str, wait: bool = True, timeout: float = 10.0) -> int:
        """Inflate or deflate the balloon so the guest keeps ``target`` memory (MiB, or ``"128M"``).

        :param wait: poll until the guest's balloon driver has reached the target (or stops moving).
        :param timeout: seconds for the whole call (QMP commands and the wait).
        :returns: the memory the guest now has, in MiB.
        """
        check_bool("wait", wait)
        budget = _Budget("balloon", timeout)
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise VlabError(f"must be MiB or a size such as '128M', not {type(target).__name__}",
                            field="balloon target", value=shown(target), fix='vm.balloon("128M")')
        mib = parse_size_mib(target, field_name="balloon target")
        if mib > self.config.mem:
            raise VlabError(f"cannot exceed the VM's memory ({self.config.mem} MiB)", field="balloon target",
                            value=shown(target), fix=f"a target between 32 and {self.config.mem}")
        self._require("balloon", VMState.RUNNING)
        if not self.config.balloon:
            raise VlabError("this VM has no balloon device", field="balloon", value=False,
                            fix="VMConfig(balloon=True)")
        self._qmp.execute("balloon", {"value": mib * _MIB}, budget.left())
        return self._wait_balloon(mib, budget) if wait else mib

    def _wait_balloon(self, mib: int, budget: _Budget) -> int:
        last, stable_since = -1, time.monotonic()
        while True:
            if budget.end - time.monotonic() <= 0.05 and last >= 0:
                return last  # the time is up: what the guest gave so far
            actual = int(self._qmp.execute("query-balloon", None, budget.left())["actual"]) // _MIB
            if actual == mib:
                return actual
            if actual != last:
                last, stable_since = actual, time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                return actual  # the guest gave what it could
            time.sleep(0.02)

    def host_sample(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> HostSample:
        """Host-side view now: QEMU's RSS and the CPU seconds each vCPU thread has used."""
        check_seconds("timeout", timeout)
        self._require("host_sample", *_ACTIVE)
        assert self.pid is not None
        return sample(self.pid, {cpu.index: cpu.thread_id for cpu in self.vcpus(timeout=timeout)})

    # -- what a dashboard reads (vlab.dashboards.ControllableVM) --------------------------------------

    @property
    def name(self) -> str:
        """The VM's name (from its config)."""
        return self.config.name

    def guest_clock(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> float:
        """The guest's real-time clock in seconds (whole seconds), read over QMP: compare two readings.

        It follows the VM's clock (``-rtc clock=vm``): it stands still while the VM is paused, so comparing
        its advance with the host's shows how long the guest did not run. It starts at the host's UTC time
        on a cold boot; a VM restored from a template continues from the template's moment (the guest's own
        clock is set from the host's: :mod:`vlab.qemu.individualize`).
        """
        check_seconds("timeout", timeout)
        self._require("guest_clock", *_ACTIVE)
        now = self.qmp("qom-get", {"path": "/machine", "property": "rtc-time"}, timeout=timeout)
        try:
            return float(calendar.timegm((now["tm_year"] + 1900, now["tm_mon"] + 1, now["tm_mday"],
                                          now["tm_hour"], now["tm_min"], now["tm_sec"])))
        except (KeyError, TypeError) as exc:
            raise VlabError("QEMU's rtc-time is not the struct tm it documents", field="rtc-time",
                            value=shown(now), fix="a machine with an RTC (pc, q35, microvm as vlab runs it)") from exc

    def vcpu_times(self) -> dict[int, float]:
        """Host CPU seconds used so far by each vCPU thread."""
        return dict(self.host_sample().vcpu_seconds)

    def rss_bytes(self) -> int:
        """QEMU's resident memory on the host, in bytes."""
        return self.host_sample().rss_bytes

    def console_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of guest output, without vlab's command framing."""
        return self.console.tail(check_int("lines", lines, 1, 100_000))

    # -- events ---------------------------------------------------------------------------------------

    def events(self, since: int = 0) -> list[Event]:
        """QMP events received so far (oldest first, the last 2000), or those after cursor ``since``.

        See :meth:`event_cursor`; :attr:`events_dropped` counts older events let go.
        """
        return self._qmp.events.since(check_int("since", since, 0, 1 << 62))

    @property
    def events_dropped(self) -> int:
        """How many of the oldest QMP events were let go to keep the event log bounded."""
        return self._qmp.events.dropped

    def event_cursor(self) -> int:
        """A cursor: pass it to :meth:`events` or :meth:`wait_event` to see only later events."""
        return self._qmp.events.count

    def wait_event(self, name: str, timeout: float = 10.0, since: int = 0) -> Event:
        """Wait for a QMP event (e.g. ``"BALLOON_CHANGE"``) after cursor ``since``.

        :raises VlabError: if none arrives within ``timeout`` s.
        """
        check_text("event", name, max_len=128, fix='vm.wait_event("BALLOON_CHANGE")', allow_space=False)
        timeout = check_seconds("timeout", timeout)
        event = self._qmp.events.wait_for(name, timeout, check_int("since", since, 0, 1 << 62))
        if event is None:
            raise VlabError(f"no {name} event within {timeout} s", field="event", value=name,
                            fix="check the event name in QEMU's QMP reference, or wait longer")
        return event

    def iter_events(self, timeout: float = 1.0) -> Iterator[Event]:
        """Yield events as they arrive until none comes for ``timeout`` s."""
        timeout = check_seconds("timeout", timeout)
        cursor = self.event_cursor()
        while self._qmp.events.wait_new(cursor, timeout):
            for event in self.events(cursor):
                cursor += 1
                yield event

    # -- snapshots ------------------------------------------------------------------------------------

    def snapshot_save(self, tag: str, timeout: float = 60.0) -> float:
        """Save the whole VM (RAM, devices, disks) as internal snapshot ``tag`` in a qcow2 file.

        Without qcow2 disks vlab adds a small qcow2 node just to hold the VM state.

        :param timeout: seconds for the whole call.
        :returns: seconds the save took.
        """
        budget = _Budget("snapshot_save", timeout)
        _checked_tag(tag)
        self._require("snapshot_save", VMState.RUNNING, VMState.PAUSED)
        self._ensure_vmstate_node(budget)
        return self._snapshot_job("snapshot-save", _checked_tag(tag), budget)

    def snapshot_load(self, tag: str, timeout: float = 60.0) -> float:
        """Return the VM to snapshot ``tag`` (the guest continues from that moment). Returns seconds taken."""
        budget = _Budget("snapshot_load", timeout)
        _checked_tag(tag)
        self._require("snapshot_load", VMState.RUNNING, VMState.PAUSED)
        self._ensure_vmstate_node(budget)
        existing = self.snapshots(timeout=budget.left())
        if tag not in existing:
            raise VlabError("no snapshot with this tag", field="snapshot", value=shown(tag),
                            fix=f"one of {existing} (vm.snapshot_save(tag) first)")
        return self._snapshot_job("snapshot-load", tag, budget)

    def snapshot_delete(self, tag: str, timeout: float = 60.0) -> float:
        """Delete snapshot ``tag``. Returns seconds taken."""
        budget = _Budget("snapshot_delete", timeout)
        _checked_tag(tag)
        self._require("snapshot_delete", VMState.RUNNING, VMState.PAUSED)
        self._ensure_vmstate_node(budget)
        return self._snapshot_job("snapshot-delete", _checked_tag(tag), budget)

    def snapshots(self, *, timeout: float = DEFAULT_QMP_TIMEOUT) -> list[str]:
        """Tags of the VM's snapshots."""
        check_seconds("timeout", timeout)
        self._require("snapshots", *_ACTIVE)
        if not self._vmstate_ready:
            return []
        for node in self._qmp.execute("query-named-block-nodes", None, timeout):
            if node.get("node-name") == _VMSTATE_NODE:
                return [snap["name"] for snap in node.get("image", {}).get("snapshots", [])]
        return []

    def _snapshot_nodes(self) -> list[str]:
        return [_VMSTATE_NODE] + [f"disk{i}" for i, d in enumerate(self.config.disks)
                                  if not d.readonly and (d.overlay or d.format == "qcow2")]

    def _ensure_vmstate_node(self, budget: _Budget) -> None:
        if self._vmstate_ready:
            return
        assert self.workdir is not None
        path = disks.create_image(self.workdir / "vmstate.qcow2", f"{max(64, self.config.mem * 2)}M",
                                  timeout=budget.left())
        self._qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": _VMSTATE_NODE,
                                           "file": {"driver": "file", "filename": str(path)}}, budget.left())
        self._vmstate_ready = True

    def _snapshot_job(self, command: str, tag: str, budget: _Budget) -> float:
        job = f"{command}-{time.monotonic_ns()}"
        nodes = self._snapshot_nodes()
        args: dict[str, Any] = {"job-id": job, "tag": tag, "devices": nodes}
        if command != "snapshot-delete":
            args["vmstate"] = _VMSTATE_NODE
        started = time.monotonic()
        self._qmp.execute(command, args, budget.left())
        while True:
            info = next((j for j in self._qmp.execute("query-jobs", None, budget.left()) if j["id"] == job), None)
            if info is None or info["status"] == "concluded":
                break
            budget.left()  # raises once the time is up
            time.sleep(0.01)
        self._qmp.execute("job-dismiss", {"id": job}, budget.left())
        if info is not None and info.get("error"):
            raise VlabError(f"{command} failed: {info['error']}", field="snapshot", value=shown(tag),
                            fix="check the tag and that the VM's disks are qcow2")
        return time.monotonic() - started

    # -- migration ------------------------------------------------------------------------------------

    def migrate_to(self, other: VM, *, downtime_limit_ms: int | None = None, bandwidth: int | None = None,
                   timeout: float = 120.0, progress: bool = False) -> MigrationResult:
        """Live-migrate this running guest into ``other``, a new VM with the same configuration.

        ``other`` is started here with ``-incoming``; afterwards it runs the guest (its console continues
        the same shell) and this VM is paused in QEMU's ``postmigrate`` state (stop it when done).

        Under TCG (QEMU 7.2), guest writes through softmmu TLB entries cached across a dirty-bitmap sync
        can escape dirty tracking, so a guest that keeps dirtying memory (``memdirty 64 20000``) often
        arrives with a corrupted kernel (measured 0/5 healthy). Booting it with ``pti=on`` on the kernel
        command line makes the guest reload CR3 (flushing QEMU's TLB) on every kernel entry, and it then
        arrived healthy 12/12 times, at the price of ≈ 2.3x slower syscall-heavy work. Idle guests are fine.

        :param downtime_limit_ms: QEMU's ``downtime-limit`` (default 300 ms).
        :param bandwidth: QEMU's ``max-bandwidth`` in bytes/s (default 128 MiB/s).
        :param progress: report each dirty-sync round and the memory still to send (a bar, or a line per round).
        :raises MigrationTimeout: if it did not complete within ``timeout`` s (it is cancelled; the source runs on).
        :raises VlabError: if the configs differ, the VMs are in the wrong states, or the migration fails.
        """
        budget = _Budget("migrate_to", timeout)
        if not isinstance(other, VM):
            raise VlabError(f"must be a new vlab.VM, not {type(other).__name__}", field="other", value=shown(other),
                            fix="vm.migrate_to(vlab.VM(vm.config))")
        if other is self:
            raise VlabError("a VM cannot migrate into itself", field="other", value=repr(other),
                            fix="vm.migrate_to(vlab.VM(vm.config))")
        if downtime_limit_ms is not None:
            check_int("downtime_limit_ms", downtime_limit_ms, 1, 2_000_000)
        if bandwidth is not None:
            check_int("bandwidth", bandwidth, 1, 1 << 40)
        check_bool("progress", progress)
        self._require("migrate_to", VMState.RUNNING, VMState.PAUSED)
        other._require("be a migration destination", VMState.CREATED)
        self._check_migratable(other)
        uri = other._start_incoming(self._macs, self._pci_slots, self.machine, min(30.0, budget.left()))

        def source(command: str, args: Mapping[str, Any] | None = None) -> Any:
            # the cancel after a timeout gets a short grace of its own, so the source is not left migrating
            return self._qmp.execute(command, args, 2.0 if command == "migrate_cancel" else budget.left())

        def destination(command: str, args: Mapping[str, Any] | None = None) -> Any:
            return other._qmp.execute(command, args, budget.left())

        try:
            params = set_parameters(source, downtime_limit_ms, bandwidth)
            with steps(None, f"migrating {self.config.name}") if progress else contextlib.nullcontext() as report:
                result = run_migration(source, destination, uri, params, max(0.001, budget.end - time.monotonic()),
                                       on_poll=_round_reporter(report) if report is not None else None)
            other._state = VMState.RUNNING if other.status(timeout=budget.left()) == "running" else VMState.PAUSED
        except BaseException:
            other.kill()
            raise
        self._stop_reason = f"migrated to another VM (postmigrate): {other!r} runs the guest now"
        self._qemu_stopped = True
        self._state = VMState.PAUSED
        return result

    def _check_migratable(self, other: VM) -> None:
        mine, theirs = self.config, other.config
        for key in ("mem", "vcpus", "machine", "balloon", "cpu", "kernel", "initrd"):
            if getattr(mine, key) != getattr(theirs, key):
                raise VlabError("source and destination must have the same configuration", field=key,
                                value=(getattr(mine, key), getattr(theirs, key)),
                                fix="create the destination with vlab.VM(source.config)")
        if mine.disks or len(mine.nics) != len(theirs.nics):
            raise VlabError("migration supports guests without disks and with the same NICs", field="disks",
                            value=len(mine.disks), fix="migrate a diskless guest (the default VMConfig())")

    def _start_incoming(self, macs: list[str], slots: Mapping[str, int], machine: str, timeout: float) -> str:
        """Launch as a migration destination (with the source's MACs, PCI slots and machine); returns the URI.

        Migration needs the same machine on both sides: a source restored from a template runs ``pc`` even
        when a cold boot of the same config would run ``microvm``.
        """
        self._inherit_machine = machine
        self._inherit_macs = list(macs)
        self._pci_slots = dict(slots)
        self._launch(incoming=True, timeout=timeout)
        return self._incoming_uri


def _qmp_arguments(arguments: Mapping[str, Any] | None, args: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` verbatim plus keywords with ``_`` read as ``-``."""
    if arguments is not None and not isinstance(arguments, Mapping):
        raise VlabError(f"must be a dict of QMP arguments, not {type(arguments).__name__}", field="arguments",
                        value=shown(arguments), fix='vm.qmp("query-status") or vm.qmp("cmd", {"arg": 1})')
    return {**(arguments or {}), **{key.replace("_", "-"): value for key, value in args.items()}}


def _checked_command(command: Any) -> str:
    return check_token("command", command, r"[A-Za-z][A-Za-z0-9_-]{0,127}", "a QMP command name",
                       'vm.qmp("query-status")')


def _checked_tag(tag: Any) -> str:
    """Snapshot tags are stored in qcow2 headers: short printable names."""
    return check_token("snapshot", tag, r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}",
                       "1-64 letters, digits or '_.:-' (first a letter or digit)", 'vm.snapshot_save("before")')


class _Budget:
    """The time left for one public call; every QMP command inside it gets only what remains."""

    def __init__(self, what: str, timeout: Any) -> None:
        self.what = what
        self.timeout = check_seconds("timeout", timeout)
        self.end = time.monotonic() + self.timeout

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise VlabError(f"{self.what} did not finish within {self.timeout:g} s", field=self.what,
                            value=self.timeout, fix="QEMU is stuck or the work is slow: retry with a longer "
                                                    "timeout, or stop the VM")
        return remaining


@atexit.register
def _stop_all_at_exit() -> None:
    """On a normal interpreter exit, stop every VM quickly (QMP quit, then kill)."""
    for vm in list(_live_vms):
        with contextlib.suppress(Exception):
            vm.stop(timeout=1.0, graceful=False)


def _round_reporter(report: Steps) -> Callable[[Mapping[str, Any]], None]:
    """A ``query-migrate`` hook that starts a progress step at each new dirty-sync round."""
    seen = -1

    def on_poll(info: Mapping[str, Any]) -> None:
        nonlocal seen
        ram = info.get("ram", {})
        rounds = int(ram.get("dirty-sync-count", 0))
        if rounds > seen:
            seen = rounds
            report(f"round {rounds}: {int(ram.get('remaining', 0)) / 2**20:.1f} MiB left to send")

    return on_poll
