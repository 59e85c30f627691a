"""The VMM proper: guests, the trap hooks, the virtual clock and the scheduling loop.

One Unicorn instance per guest (each has its own address space); the host's frame pool is
mapped into each at :data:`~vlab.toyvmm.memory.POOL_BASE` and reachable only through the
TLB-fill hook, which applies the guest's page table and the VMM's bounds check. Three hooks
turn hardware events into exits:

* interrupt hook -- ``ecall`` (intno 8) and illegal instructions (intno 2: CSR access, ``wfi``,
  ``sret``, ``sfence.vma`` from U-mode). The PC is already past the instruction and no
  architectural trap entry happened, so the VMM fetches and decodes the word itself.
* MMIO callbacks -- loads/stores to the UART page.
* TLB-fill hook -- every TLB miss: shadow or nested translation, isolation check, copy-on-write.
  Returning ``False`` makes ``emu_start`` fail with the PC on the faulting instruction; the VMM
  then delivers a page fault or an access fault (an isolation violation) to the guest.

Virtual time is instructions executed (``emu_start(count=...)``), never the wall clock
(``timeout=`` is wall-clock and non-deterministic). A slice runs in *chunks* of at most
``chunk`` instructions, cut at timer deadlines. Unicorn does not report how many instructions
of a count it executed before a hook stopped it, so when a trap handler ends a chunk early
(yield, ``wfi``, shutdown) the VMM does not call ``emu_stop()`` (which would only take effect at
the end of a translation block anyway): it parks the vCPU's context and lets the rest of the
count run in a VMM-owned counting loop (the *sink*), which tells exactly how much was left.
Only a chunk ended by a memory fault is charged in full.
The hooks are registered on Unicorn's C library directly (ctypes), not through the binding's
``hook_add``/``mmio_map``: its wrapper adds two Python frames and an exception guard to every
call, and without them a bare hook runs 2.5x faster (``bench/bench_toyvmm.py``); the machine
keeps its own exception guard (``_hook_failed``). Registers are read the same way
(:class:`~vlab.toyvmm.vcpu.FastRegs`).
Write-protection uses TLB permissions (unicorn #2368), and all hooks are installed before any
code is translated (unicorn #2200): see the package docstring.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import struct
from typing import Any, NamedTuple

import unicorn
from unicorn import riscv_const as rv
from unicorn import unicorn_const as uc_const
from unicorn.unicorn_py3 import unicorn as binding

from vlab.errors import StateError, VlabError
from vlab.toyvmm.asm import RAM_BASE
from vlab.toyvmm.devices import UART, UART_BASE
from vlab.toyvmm.exits import Exit, ExitReason, ExitRecord, HandlerTable, count_names
from vlab.toyvmm.handlers import DEFAULT_HANDLERS
from vlab.toyvmm.isa import CSR, Insn, decode
from vlab.toyvmm.memory import PAGE, POOL_BASE, GuestMemory, HostMemory, MemoryReport, share_pages
from vlab.toyvmm.mmu import MMU, PagingMode, PagingStats, walk
from vlab.toyvmm.sched import Scheduler, make_scheduler
from vlab.toyvmm.sched import ms as to_insns
from vlab.toyvmm.trace import Slice, Trace
from vlab.toyvmm.vcpu import VCPU, ClosedRegs, Mode, VCPUState

__all__ = ["Machine", "Guest", "GuestState", "Violation", "MAILBOX"]

_Uc: Any = unicorn.Uc  # type: ignore[attr-defined]  # the binding's typing is partial
UcError: type[Exception] = unicorn.UcError  # type: ignore[attr-defined]

#: Guest-physical address of the guest programs' progress counters (8 bytes per hart).
MAILBOX = 0x8000_F000
#: The "sink": a VMM-owned page with ``1: addi t0, t0, 1; j 1b``. When a trap handler ends a
#: chunk early, the vCPU's context is saved and the rest of the chunk's instruction count is
#: burnt here; t0 then tells exactly how many guest instructions really ran. Its virtual address
#: is not canonical in Sv39/Sv48 and beyond any RAM when paging is off: no guest can reach it.
_SINK_VA, _SINK_PA = 1 << 63, 0x2000_0000
#: ``emu_start``'s ``until``, ignored: the engine runs with an empty exit list (``ctl_exits_enabled``),
#: so no guest address stops it (``until=0`` stopped a guest running code at virtual address 0).
_NO_UNTIL = 0
_SINK_CODE = (0x00128293).to_bytes(4, "little") + (0xFFDFF06F).to_bytes(4, "little")
_REG_T0, _PC = rv.UC_RISCV_REG_X0 + 5, rv.UC_RISCV_REG_PC
_READ_EXEC = uc_const.UC_PROT_READ | uc_const.UC_PROT_EXEC
_SYSTEM_REASONS = {"wfi": ExitReason.WFI, "sret": ExitReason.SRET, "sfence": ExitReason.SFENCE}
# Module-level names for the reasons the hooks use: an enum class attribute lookup per trap adds up.
_HYPERCALL, _SYSCALL, _ILLEGAL_INSN = ExitReason.HYPERCALL, ExitReason.SYSCALL, ExitReason.ILLEGAL_INSN
_MMIO_READ, _MMIO_WRITE = ExitReason.MMIO_READ, ExitReason.MMIO_WRITE
_unpack_word = struct.Struct("<I").unpack_from


@functools.lru_cache(maxsize=4096)
def _classify(word: int) -> tuple[ExitReason, Insn]:
    """Exit reason of an instruction word that trapped in the guest's (virtual) S-mode, and its
    decoding: a pure function of the word, so cached (from U-mode every such trap is ILLEGAL_INSN)."""
    insn = decode(word)
    if insn.kind == "csr":
        return (ExitReason.CSR_WRITE if insn.writes else ExitReason.CSR_READ), insn
    return _SYSTEM_REASONS.get(insn.kind, ExitReason.ILLEGAL_INSN), insn


def _install_hooks(uc: Any, machine: Machine) -> tuple[Any, ...]:
    """Register the hooks on the C library (see the module docstring); returns the ctypes
    callbacks, which must live as long as the engine."""
    interrupt = binding.HOOK_INTR_CFUNC(machine._on_interrupt)
    tlb_fill = binding.HOOK_TLB_FILL_CFUNC(machine._tlb_fill_guard)
    mmio_read = binding.MMIO_READ_CFUNC(machine._on_mmio_read)
    mmio_write = binding.MMIO_WRITE_CFUNC(machine._on_mmio_write)
    lib, handle = binding.uclib, uc._uch
    statuses = [lib.uc_hook_add(handle, ctypes.byref(ctypes.c_size_t()), kind, callback, None, 1, 0)
                for kind, callback in ((uc_const.UC_HOOK_INTR, interrupt), (uc_const.UC_HOOK_TLB_FILL, tlb_fill))]
    statuses.append(lib.uc_mmio_map(handle, UART_BASE, PAGE, mmio_read, None, mmio_write, None))
    if any(statuses):
        raise UcError(max(statuses))
    return interrupt, tlb_fill, mmio_read, mmio_write


class GuestState(enum.Enum):
    RUNNING = "running"
    HALTED = "halted"   #: shut down by hypercall
    KILLED = "killed"   #: terminated by the VMM


class Violation(NamedTuple):
    """An attempt to reach memory that is not the guest's (the isolation audit trail)."""

    time: int
    guest: str
    vcpu: int
    pc: int
    addr: int
    access: str
    what: str

    def __str__(self) -> str:
        return (f"t={self.time:>10} {self.guest}/{self.vcpu} {self.access:<5} {self.addr:#018x} "
                f"pc={self.pc:#x}: {self.what}")


class Guest:
    """A virtual machine: its Unicorn instance, memory, UART and vCPUs (see :meth:`Machine.add_guest`)."""

    def __init__(self, machine: Machine, name: str, program: bytes, *, vcpus: int, ram: int,
                 weight: int, cap: int) -> None:
        self.machine, self.name, self.weight, self.cap = machine, name, weight, cap
        self.state = GuestState.RUNNING
        self.exit_code: int | None = None
        self.uart, self.exit_counts = UART(), [0] * len(ExitReason)
        self.memory = GuestMemory(machine.host, ram, weak_bounds=machine.weak_bounds)
        self.memory.write(RAM_BASE, program)
        self.uc: Any = _Uc(uc_const.UC_ARCH_RISCV, uc_const.UC_MODE_RISCV64)
        self.uc.ctl_set_tlb_mode(uc_const.UC_TLB_VIRTUAL)
        self.uc.ctl_exits_enabled(True)  # with no exits: `count` alone ends a run (see _NO_UNTIL)
        self.uc.ctl_set_exits([])
        self.uc.mem_map_ptr(POOL_BASE, machine.host.frames * PAGE, uc_const.UC_PROT_ALL, machine.host.address)
        self.uc.mem_map(_SINK_PA, PAGE, _READ_EXEC)
        self.uc.mem_write(_SINK_PA, _SINK_CODE)
        self._callbacks = _install_hooks(self.uc, machine)
        self.fetch_cache: dict[int, int] = {}
        self._boot(vcpus)

    def _boot(self, vcpus: int) -> None:
        """Fresh vCPUs in boot state: PC at RAM, a0 = hart id, a1 = RAM size, really in U-mode."""
        self.vcpus = [VCPU(self, i) for i in range(vcpus)]
        for vcpu in self.vcpus:
            for reg, value in ((rv.UC_RISCV_REG_PRIV, 0), (_PC, RAM_BASE), (rv.UC_RISCV_REG_A0, vcpu.index),
                               (rv.UC_RISCV_REG_A1, self.memory.size)):
                self.uc.reg_write(reg, value)
            vcpu.context = self.uc.context_save()
        self.loaded: VCPU | None = None
        self.flush_tlb()
        self.uc.ctl_flush_tb()

    def reboot(self, program: bytes) -> None:
        """Reset the guest with new RAM contents (zeroed, then ``program``) and fresh vCPUs.

        The vCPU objects are replaced in place, so schedulers keep their run-queue slots.
        """
        if len(program) > self.memory.size:
            raise VlabError("the program does not fit in guest RAM", field="ram", value=self.memory.size)
        missing = sum(frame is None for frame in self.memory.p2m)
        if self.memory.balloon_take(RAM_BASE, len(self.memory.p2m)) < missing:
            raise VlabError("the host has no frames left to give the guest its ballooned RAM back",
                            field="host_memory", value=self.machine.host.frames * PAGE,
                            fix="free memory (balloon other guests) or create the Machine with more host_memory")
        if not (self.memory.write(RAM_BASE, bytes(self.memory.size)) and self.memory.write(RAM_BASE, program)):
            raise VlabError("guest RAM could not be rewritten", field="ram", value=self.memory.size)
        old, scheduler = self.vcpus, self.machine.scheduler
        self._boot(len(old))
        for before, after in zip(old, self.vcpus, strict=True):
            scheduler.vcpus[scheduler.vcpus.index(before)] = after
            scheduler.forget(before, after)
        self.state, self.exit_code = GuestState.RUNNING, None

    def __repr__(self) -> str:
        return f"<Guest {self.name} {self.state.value} vcpus={len(self.vcpus)}>"

    def load(self, vcpu: VCPU) -> None:
        """Make ``vcpu`` the one whose registers are in the Unicorn CPU (a vCPU context switch)."""
        if self.uc is None:
            raise StateError("use a vCPU", "closed", ["open"], fix="use guests before Machine.close()")
        if self.loaded is vcpu:
            return
        if self.loaded is not None:
            self.loaded.context = self.uc.context_save()
        self.uc.context_restore(vcpu.context)
        self.loaded = vcpu
        self.flush_tlb()

    def flush_tlb(self) -> None:
        self.uc.ctl(uc_const.UC_CTL_TLB_FLUSH, uc_const.UC_CTL_IO_WRITE)
        self.fetch_cache.clear()

    def halt(self, code: int) -> None:
        """Shut down on the guest's request."""
        self._stop(GuestState.HALTED, code, "halted")

    def kill(self, why: str) -> None:
        """Terminate the guest from the VMM side."""
        self.uart.output += f"\n[toyvmm: guest {self.name} killed: {why}]\n".encode()
        self._stop(GuestState.KILLED, -1, "killed")

    def _stop(self, state: GuestState, code: int, reason: str) -> None:
        self.state, self.exit_code = state, code
        for vcpu in self.vcpus:
            vcpu.state = VCPUState.HALTED
        self.machine.request_stop(reason)

    def mailbox(self, hart: int = 0) -> int:
        """The guest program's progress counter for ``hart`` (see ``kernel.inc``)."""
        return self.memory.read_u64(MAILBOX + 8 * hart) or 0

    @property
    def exits(self) -> dict[str, int]:
        """Exit counts by reason name (only reasons that occurred)."""
        return count_names(self.exit_counts)


class Machine:
    """The toy VMM. Add guests, then :meth:`run` them under a scheduler in virtual time.

    :param scheduler: a :class:`~vlab.toyvmm.sched.Scheduler` or its name.
    :param paging: ``"shadow"`` or ``"nested"`` (:class:`~vlab.toyvmm.mmu.PagingMode`).
    :param chunk: longest run between two looks at timers and wake-ups (instructions).
    :param host_memory: bytes in the host's frame pool.
    :param log: record every exit in :attr:`log` (slower).
    :param weak_bounds: the deliberately broken bounds check of lab 05 (off by default).
    :param on_violation: ``"fault"`` (deliver an access fault) or ``"kill"`` the guest.
    :param nested_levels: levels of the VMM's nested table, *m* in the 2-D walk cost.
    """

    #: Bound of :meth:`run` when it is given none (virtual milliseconds).
    RUN_LIMIT_MS = 10_000

    def __init__(self, *, scheduler: Scheduler | str = "round-robin", paging: PagingMode | str = "shadow",
                 chunk: int = to_insns(0.2), host_memory: int = 32 << 20, log: bool = False,
                 weak_bounds: bool = False, on_violation: str = "fault", nested_levels: int = 3) -> None:
        if on_violation not in ("fault", "kill"):
            raise VlabError("unknown violation policy", field="on_violation", value=on_violation,
                            fix='use "fault" or "kill"')
        if chunk <= 0:
            raise VlabError("chunk must be a positive instruction count", field="chunk", value=chunk)
        if not isinstance(host_memory, int) or host_memory < PAGE:
            raise VlabError("host_memory is the host's frame pool in bytes", field="host_memory", value=host_memory,
                            fix="e.g. Machine(host_memory=32 << 20)")
        self.scheduler = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        try:
            self.mmu = MMU(self, PagingMode(paging), nested_levels)
        except ValueError:
            raise VlabError("unknown paging mode", field="paging", value=paging,
                            fix='use "shadow" or "nested"') from None
        self.chunk, self.weak_bounds, self.on_violation = chunk, weak_bounds, on_violation
        self.host = HostMemory(host_memory // PAGE)
        self.handlers = HandlerTable(DEFAULT_HANDLERS)
        self.guests: list[Guest] = []
        self.now, self.logging, self.trace = 0, log, Trace()
        self.log: list[ExitRecord] = []
        self.violations: list[Violation] = []
        self._current: VCPU | None = None
        self._stop_reason: str | None = None
        self._hook_error: BaseException | None = None
        self._in_trap_hook = self._sinking = self._closed = False

    # -- set-up ---------------------------------------------------------------------------------
    def add_guest(self, program: bytes | str, *, name: str | None = None, vcpus: int = 1,
                  ram: int = 1 << 20, weight: int = 256, cap: int = 0) -> Guest:
        """Create a guest running ``program`` (flat binary, or a name from :data:`PROGRAMS`).

        :param weight: share under weighted schedulers (Xen default 256).
        :param cap: credit-scheduler cap in percent of the CPU (0 = uncapped).
        """
        if self._closed:
            raise StateError("add a guest", "closed", ["open"])
        if isinstance(program, str):
            from vlab.toyvmm.programs import load_program

            name = name or f"{program}{len(self.guests)}"
            program = load_program(program)
        name = name or f"guest{len(self.guests)}"
        if not 1 <= vcpus <= 8:
            raise VlabError("a guest has 1 to 8 vCPUs", field="vcpus", value=vcpus)
        if weight <= 0 or not 0 <= cap <= 100:
            raise VlabError("weight must be > 0 and cap within 0..100", field="weight/cap", value=(weight, cap))
        if any(g.name == name for g in self.guests):
            raise VlabError("guest names must be unique", field="name", value=name)
        if len(program) > ram:
            raise VlabError("the program does not fit in guest RAM", field="ram", value=ram,
                            fix=f"give the guest at least {len(program)} bytes of RAM")
        guest = Guest(self, name, program, vcpus=vcpus, ram=ram, weight=weight, cap=cap)
        self.guests.append(guest)
        for vcpu in guest.vcpus:
            self.scheduler.add(vcpu)
        return guest

    def guest(self, name: str) -> Guest:
        for guest in self.guests:
            if guest.name == name:
                return guest
        raise VlabError("no such guest", field="name", value=name,
                        fix=f"one of: {', '.join(g.name for g in self.guests)}")

    def close(self) -> None:
        """Release every Unicorn instance and the host memory (idempotent)."""
        if not self._closed:
            self._closed = True
            for guest in self.guests:
                for vcpu in guest.vcpus:
                    vcpu.regs = ClosedRegs()  # its handle points into the engine freed below
                guest.uc = None  # Unicorn closes the engine when the last reference goes
            self.host.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running ----------------------------------------------------------------------------
    def run(self, *, ms: float | None = None, until: int | None = None) -> Trace:
        """Run for ``ms`` virtual milliseconds, or until virtual time ``until`` (instructions).

        Stops earlier when every guest has halted. With neither bound, runs at most
        :attr:`RUN_LIMIT_MS` virtual ms (a guest that never halts must not hang a notebook).

        :returns: :attr:`trace`, the schedule so far.
        """
        if self._closed:
            raise StateError("run", "closed", ["open"])
        end = until if until is not None else self.now + to_insns(ms if ms is not None else self.RUN_LIMIT_MS)
        while self.now < end:
            self._wake_due()
            if all(g.state is not GuestState.RUNNING for g in self.guests):
                break
            picked = self.scheduler.pick(self.now)
            if picked is not None:
                self._run_slice(picked[0], max(min(picked[1], end - self.now), 1))
            elif not self._idle(end):
                break
        return self.trace

    def _deadlines(self, *states: VCPUState) -> list[int]:
        """Armed timer deadlines of the vCPUs in ``states``."""
        return [d for g in self.guests for v in g.vcpus if v.state in states and (d := v.timer_deadline) is not None]

    def _idle(self, end: int) -> bool:
        """Nothing runnable: jump virtual time to the next event. False if there is none."""
        events = self._deadlines(VCPUState.BLOCKED)
        later = self.scheduler.idle_until(self.now)
        if later is not None and later > self.now:
            events.append(later)
        if not events:
            return False
        target = max(min(*events, end), self.now + 1)
        self.trace.append(Slice(self.now, target, "idle", 0, "idle"))
        self.now = target
        return True

    def _wake_due(self) -> list[VCPU]:
        woken = [v for g in self.guests for v in g.vcpus
                 if v.state is VCPUState.BLOCKED and v.wakeup_pending(self.now)]
        for vcpu in woken:
            vcpu.state, vcpu.woken_at = VCPUState.RUNNABLE, vcpu.csrs[CSR.STIMECMP]
            self.scheduler.wake(vcpu, self.now)
        return woken

    def _run_slice(self, vcpu: VCPU, length: int) -> None:
        guest, start, ran, reason = vcpu.guest, self.now, 0, "slice"
        guest.load(vcpu)
        self._current = vcpu
        if vcpu.woken_at is not None:
            vcpu.wake_latencies.append(self.now - vcpu.woken_at)
            vcpu.woken_at = None
        while ran < length:
            if vcpu.interrupt_deliverable(self.now):
                self._dispatch(Exit(ExitReason.TIMER, vcpu, vcpu.regs.read(_PC)))
            future = [d for d in self._deadlines(VCPUState.RUNNABLE, VCPUState.BLOCKED) if d > self.now]
            self._stop_reason = None
            executed = self._run_chunk(vcpu, min(self.chunk, length - ran, *(d - self.now for d in future)))
            ran += executed
            self.now += executed
            if self._stop_reason is not None:
                reason = self._stop_reason
                break
            if any(self.scheduler.preempts(vcpu, w, self.now) for w in self._wake_due()):
                reason = "preempted"
                break
        vcpu.run_time += ran
        self.scheduler.charge(vcpu, ran, self.now, reason)
        self.trace.append(Slice(start, self.now, guest.name, vcpu.index, reason))
        self._current = None

    def _run_chunk(self, vcpu: VCPU, count: int) -> int:
        """Run up to ``count`` instructions; returns how many the guest really executed."""
        uc = vcpu.guest.uc
        failure: Exception | None = None
        try:
            uc.emu_start(vcpu.regs.read(_PC), _NO_UNTIL, count=count)
        except UcError as error:
            failure = error
        sunk, self._sinking = self._sinking, False
        if self._hook_error is not None:  # a hook raised (see _hook_failed): it is the real cause
            raised, self._hook_error = self._hook_error, None
            raise raised
        if failure is not None:
            self._on_emu_error(vcpu, failure)
            return count  # Unicorn does not say where in the count it failed: charge it all
        if not sunk:
            return count
        t0, pc = vcpu.regs.read(_REG_T0), vcpu.regs.read(_PC)
        uc.context_restore(vcpu.context)
        vcpu.parked_pc = None
        vcpu.guest.flush_tlb()
        return count - (2 * t0 - (0 if pc == _SINK_VA else 1))

    def request_stop(self, reason: str) -> None:
        """End the current chunk and slice (from a handler): ``yield``, ``blocked``, ``halted``…"""
        self._stop_reason = reason
        vcpu = self._current
        if vcpu is None or self._sinking:
            return
        if self._in_trap_hook:  # exact accounting: park the vCPU, burn the rest in the sink
            vcpu.parked_pc = vcpu.regs.read(_PC)
            vcpu.context = vcpu.guest.uc.context_save()
            self._sinking = True
            vcpu.regs.write(_REG_T0, 0)
            vcpu.regs.write(_PC, _SINK_VA)
            vcpu.guest.flush_tlb()
        else:  # from MMIO or TLB hooks: stop at the end of the translation block
            vcpu.guest.uc.emu_stop()

    # -- exits ------------------------------------------------------------------------------
    def _dispatch(self, exit: Exit) -> None:
        guest = exit.vcpu.guest
        guest.exit_counts[exit.reason] += 1
        if self.logging:
            self.log.append(ExitRecord(self.now, guest.name, exit.vcpu.index, exit.reason, exit.pc,
                                       exit.word, exit.addr))
        handler = self.handlers.by_number[exit.reason]
        try:
            handler(exit)
        except Exception as error:  # a lab's handler failed: say which one, keep the traceback
            if not any("exit handler" in note for note in getattr(error, "__notes__", [])):
                error.add_note(f"raised by the {exit.reason.name} exit handler {handler!r} for {exit!r}")
            raise

    def _fetch(self, vcpu: VCPU, pc: int) -> int:
        """The instruction word at guest-virtual ``pc`` (0 if it cannot be read)."""
        frame = vcpu.guest.fetch_cache.get(pc >> 12)
        if frame is None:
            satp = vcpu.csrs[CSR.SATP]
            gpa = walk(vcpu.guest.memory, satp, pc).gpa if satp >> 60 else pc
            frame = vcpu.guest.memory.frame_of(gpa) if gpa is not None else None
            if frame is None:
                return 0
            vcpu.guest.fetch_cache[pc >> 12] = frame
        word: int = _unpack_word(self.host.view, frame * PAGE + (pc & (PAGE - 1)))[0]
        return word

    # The hooks below are called from C through ctypes, which would print and drop an exception:
    # each catches everything and hands it to _hook_failed, which stops the engine so that
    # _run_chunk raises it (what the binding's wrapper does, without its cost on every call).
    def _on_interrupt(self, uc: Any, intno: int, _data: Any) -> None:
        vcpu = self._current
        if self._sinking or vcpu is None:
            return
        self._in_trap_hook = True
        try:
            if intno == 8:
                self._dispatch(Exit(_HYPERCALL if vcpu.mode else _SYSCALL, vcpu))
            elif intno == 2:
                pc = vcpu.regs.read(_PC) - 4  # Unicorn already stepped past it
                frame = vcpu.guest.fetch_cache.get(pc >> 12)  # _fetch's fast path, inlined: calls cost
                if frame is None:
                    word = self._fetch(vcpu, pc)
                else:
                    word = _unpack_word(self.host.view, frame * PAGE + (pc & 0xFFF))[0]
                reason, insn = _classify(word)
                self._dispatch(Exit(reason if vcpu.mode else _ILLEGAL_INSN, vcpu, pc, insn, word))
            else:  # other synchronous exceptions: reflect them to the guest kernel as they are
                vcpu.inject_trap(intno, 0, vcpu.regs.read(_PC))
        except BaseException as error:
            self._hook_failed(error)
        finally:
            self._in_trap_hook = False

    def _on_mmio_read(self, uc: Any, offset: int, size: int, _data: Any) -> int:
        try:
            exit = Exit(_MMIO_READ, self._current, None, None, 0, offset, size)  # type: ignore[arg-type]
            self._dispatch(exit)
            return exit.value
        except BaseException as error:
            self._hook_failed(error)
            return 0

    def _on_mmio_write(self, uc: Any, offset: int, size: int, value: int, _data: Any) -> None:
        try:
            self._dispatch(Exit(_MMIO_WRITE, self._current, None, None, 0, offset, size, value))  # type: ignore[arg-type]
        except BaseException as error:
            self._hook_failed(error)

    def _tlb_fill_guard(self, uc: Any, va: int, access: int, entry: Any, data: Any) -> bool:
        try:
            return bool(self._on_tlb_fill(uc, va, access, entry.contents, data))
        except BaseException as error:
            self._hook_failed(error)
            return False

    def _hook_failed(self, error: BaseException) -> None:
        if self._hook_error is None:  # the first one is the cause; later ones are consequences
            self._hook_error = error
        if self._current is not None:
            self._current.guest.uc.emu_stop()

    def _on_tlb_fill(self, uc: Any, va: int, access: int, entry: Any, _data: Any) -> bool:
        vcpu = self._current
        assert vcpu is not None
        if va & ~(PAGE - 1) == _SINK_VA:  # the VMM's own page: mapped only while sinking
            if not self._sinking:
                return False  # a guest that touched it: killed as an engine error
            entry.paddr, entry.perms = _SINK_PA, _READ_EXEC
            return True
        return not self._sinking and self.mmu.fill(vcpu, va, access, entry)

    def _on_emu_error(self, vcpu: VCPU, error: Any) -> None:
        fault, vcpu.pending_fault = vcpu.pending_fault, None
        pc = vcpu.regs.read(_PC)
        if fault is None:
            if error.errno == uc_const.UC_ERR_INSN_INVALID:  # e.g. ebreak: the handler tells them apart
                self._dispatch(Exit(ExitReason.ILLEGAL_INSN, vcpu, pc, word=self._fetch(vcpu, pc)))
            else:
                self.record_violation(vcpu, pc, pc, "fetch", f"unicorn error: {error}")
                vcpu.guest.kill(f"unicorn error {error}")
            return
        va, kind, violation = fault
        if violation:
            self.record_violation(vcpu, pc, va, kind, "outside guest RAM")
        if pc == vcpu.csrs[CSR.STVEC] and vcpu.mode == Mode.SUPERVISOR:
            vcpu.guest.kill("double fault: the trap handler itself faults")
        else:
            reason = ExitReason.ILLEGAL_ACCESS if violation else ExitReason.PAGE_FAULT
            self._dispatch(Exit(reason, vcpu, pc, addr=va, access=kind))

    # -- services for handlers ----------------------------------------------------------------
    def record_violation(self, vcpu: VCPU, pc: int, addr: int, access: str, what: str) -> None:
        """Add an entry to :attr:`violations` (the isolation audit trail)."""
        self.violations.append(Violation(self.now, vcpu.guest.name, vcpu.index, pc, addr, access, what))

    def address_space_changed(self, vcpu: VCPU) -> None:
        """``satp`` write or ``sfence.vma``: drop the shadow table and the TLB."""
        self.mmu.flush(vcpu)

    @property
    def paging_stats(self) -> PagingStats:
        """Shadow vs nested paging counters (see :mod:`vlab.toyvmm.mmu`)."""
        return self.mmu.stats

    @property
    def cow_copies(self) -> int:
        """Shared pages copied because a guest wrote to them."""
        return self.mmu.cow_copies

    def memory_changed(self, guest: Guest) -> None:
        """The p2m of ``guest`` changed (balloon): no stale translation or translated code may stay."""
        for other in self.guests:
            other.flush_tlb()
            other.uc.ctl_flush_tb()

    # -- memory services --------------------------------------------------------------------
    def share_pages(self) -> int:
        """Merge identical pages across all guests (copy-on-write); returns the frames freed."""
        freed = share_pages([g.memory for g in self.guests])
        for guest in self.guests:
            guest.flush_tlb()
        return freed

    def memory_report(self) -> MemoryReport:
        """Guest pages vs host frames in use: what ballooning and sharing saved."""
        mapped = [f for g in self.guests for f in g.memory.p2m if f is not None]
        shared = sum(1 for f in mapped if self.host.refs[f] > 1)
        return MemoryReport(sum(len(g.memory.p2m) for g in self.guests), len(set(mapped)),
                            sum(g.memory.ballooned for g in self.guests), shared)

    def exit_counts(self) -> dict[str, int]:
        """Exit counts by reason, summed over all guests."""
        return count_names([sum(c) for c in zip(*(g.exit_counts for g in self.guests), strict=True)])
