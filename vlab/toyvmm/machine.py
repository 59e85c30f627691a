"""The VMM proper: guests, the run loop in virtual time, exit dispatch, and the services
handlers may use (:class:`~vlab.toyvmm.exits.Services`).

Virtual time is instructions executed (``emu_start(count=...)``), never the wall clock. A slice
runs in *chunks* of at most ``chunk`` instructions, cut at timer deadlines; before each chunk a
pending, enabled interrupt is delivered (a ``TIMER`` exit). How a chunk runs on Unicorn -- the
hooks, the exact accounting when a handler stops it early -- is :mod:`vlab.toyvmm.engine`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, ClassVar, NamedTuple

from unicorn import riscv_const as rv
from unicorn import unicorn_const as uc_const

from vlab.errors import StateError, VlabError
from vlab.toyvmm.asm import RAM_BASE
from vlab.toyvmm.devices import UART
from vlab.toyvmm.engine import ClosedRegs, Engine, FastRegs, new_cpu
from vlab.toyvmm.exits import Exit, ExitReason, ExitRecord, HandlerTable, count_names
from vlab.toyvmm.handlers import DEFAULT_HANDLERS
from vlab.toyvmm.isa import CSR
from vlab.toyvmm.memory import PAGE, GuestMemory, HostMemory, MemoryReport, share_pages
from vlab.toyvmm.mmu import MMU, PagingMode, PagingStats
from vlab.toyvmm.sched import Scheduler, make_scheduler
from vlab.toyvmm.sched import ms as to_insns
from vlab.toyvmm.trace import Trace
from vlab.toyvmm.vcpu import VCPU, VCPUState

__all__ = ["BOOT_REFUSAL", "MAILBOX", "Guest", "GuestState", "Machine", "Violation", "boots_refused"]

#: Why booting a guest is refused in this context (a lab's model must predict, not measure), or None. Public so
#: that the grader carries it into the process where the student's model runs (:mod:`vlab.grading.hosts`).
BOOT_REFUSAL: ContextVar[str | None] = ContextVar("vlab_toyvmm_boot_refusal", default=None)


@contextlib.contextmanager
def boots_refused(why: str) -> Iterator[None]:
    """While inside, :meth:`Machine.add_guest` raises a :class:`VlabError` saying ``why``."""
    token = BOOT_REFUSAL.set(why)
    try:
        yield
    finally:
        BOOT_REFUSAL.reset(token)


#: Guest-physical address of the guest programs' progress counters (8 bytes per hart).
MAILBOX = 0x8000_F000
_PC = rv.UC_RISCV_REG_PC


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

    #: What never changes in a guest's life (see :attr:`vlab.toyvmm.vcpu.VCPU.REMOTE_FIXED`).
    REMOTE_FIXED: ClassVar[frozenset[str]] = frozenset({"machine", "name", "uart", "memory"})

    def __init__(self, machine: Machine, name: str, program: bytes, *, vcpus: int, ram: int,
                 weight: int, cap: int) -> None:
        self.machine, self.name, self.weight, self.cap = machine, name, weight, cap
        self.state = GuestState.RUNNING
        self.exit_code: int | None = None
        self.uart, self.exit_counts = UART(), [0] * len(ExitReason)
        self.memory = GuestMemory(machine.host, ram, weak_bounds=machine.weak_bounds)
        self.memory.write(RAM_BASE, program)
        self.uc: Any = new_cpu(machine.host, machine.engine.sink)
        self._callbacks = machine.engine.install(self.uc)
        self.fetch_cache: dict[int, int] = {}
        self.counter_traps = machine.engine.counter_traps(self)
        self._boot(vcpus)

    def _boot(self, vcpus: int) -> None:
        """Fresh vCPUs in boot state: PC at RAM, a0 = hart id, a1 = RAM size, really in U-mode."""
        self.vcpus = [VCPU(self, i, FastRegs(self.uc)) for i in range(vcpus)]
        for vcpu in self.vcpus:
            for reg, value in ((rv.UC_RISCV_REG_PRIV, 0), (_PC, RAM_BASE), (rv.UC_RISCV_REG_A0, vcpu.index),
                               (rv.UC_RISCV_REG_A1, self.memory.size)):
                self.uc.reg_write(reg, value)
            vcpu.context = self.uc.context_save()
        self.loaded: VCPU | None = None
        self.machine.engine.reset_counter_traps(self)
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
        if self.counter_traps is not None:
            self.counter_traps.tlb_flushed()

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
    :param leak_host_counters: let ``rdcycle``/``rdinstret`` (and the hpm counters) run natively, as
        Unicorn 2.1.4 does: in either mode and whatever ``scounteren`` says, the guest reads the host's
        cycle counter (lab 02's sensitive-but-unprivileged instruction, :mod:`.nonvirt`). Off (the
        default), the VMM traps each one (:class:`~.engine.CounterTraps`) and emulates it.
    """

    #: Bound of :meth:`run` when it is given none (virtual milliseconds).
    RUN_LIMIT_MS = 10_000

    def __init__(self, *, scheduler: Scheduler | str = "round-robin", paging: PagingMode | str = "shadow",
                 chunk: int = to_insns(0.2), host_memory: int = 32 << 20, log: bool = False,
                 weak_bounds: bool = False, on_violation: str = "fault", nested_levels: int = 3,
                 leak_host_counters: bool = False) -> None:
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
            self.mmu = MMU(PagingMode(paging), nested_levels)
        except ValueError:
            raise VlabError("unknown paging mode", field="paging", value=paging,
                            fix='use "shadow" or "nested"') from None
        self.chunk, self.weak_bounds, self.on_violation = chunk, weak_bounds, on_violation
        self.leak_host_counters = leak_host_counters
        self.host = HostMemory(host_memory // PAGE)
        self.handlers = HandlerTable(DEFAULT_HANDLERS)
        self.guests: list[Guest] = []
        self.now, self.logging, self.trace = 0, log, Trace()
        self.log: list[ExitRecord] = []
        self.violations: list[Violation] = []
        self.engine = Engine(self)
        self._stop_reason: str | None = None
        self._closed = False

    # -- set-up ---------------------------------------------------------------------------------
    def add_guest(self, program: bytes | str, *, name: str | None = None, vcpus: int = 1,
                  ram: int = 1 << 20, weight: int = 256, cap: int = 0) -> Guest:
        """Create a guest running ``program`` (flat binary, or a name from :data:`PROGRAMS`).

        :param weight: share under weighted schedulers (Xen default 256).
        :param cap: credit-scheduler cap in percent of the CPU (0 = uncapped).
        """
        if self._closed:
            raise StateError("add a guest", "closed", ["open"])
        refusal = BOOT_REFUSAL.get()
        if refusal is not None:
            raise VlabError("no guest may boot here", field="program", value=program if isinstance(program, str)
                            else f"{len(program)} bytes", fix=refusal)
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
                guest.counter_traps = None  # it holds the engine too
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
        self.trace.add_idle(self.now, target)
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
        self.engine.current = vcpu
        if vcpu.woken_at is not None:
            vcpu.wake_latencies.append(self.now - vcpu.woken_at)
            vcpu.woken_at = None
        while ran < length:
            if vcpu.interrupt_deliverable(self.now):
                self.dispatch(Exit(ExitReason.TIMER, vcpu, vcpu.regs.read(_PC)))
            future = [d for d in self._deadlines(VCPUState.RUNNABLE, VCPUState.BLOCKED) if d > self.now]
            self._stop_reason = None
            executed = self.engine.run(vcpu, min(self.chunk, length - ran, *(d - self.now for d in future)))
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
        self.trace.add_run(guest.name, vcpu.index, start, self.now, reason)
        self.engine.current = None

    def request_stop(self, reason: str) -> None:
        """End the current chunk and slice (from a handler): ``yield``, ``blocked``, ``halted``…"""
        self._stop_reason = reason
        if self.engine.current is not None:
            self.engine.stop(self.engine.current)

    # -- exits ------------------------------------------------------------------------------
    def dispatch(self, exit: Exit) -> None:
        """Count (and log) the exit, then call the handler registered for its reason."""
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

    # -- services for handlers ----------------------------------------------------------------
    def record_violation(self, vcpu: VCPU, pc: int, addr: int, access: str, what: str) -> None:
        """Add an entry to :attr:`violations` (the isolation audit trail)."""
        self.violations.append(Violation(self.now, vcpu.guest.name, vcpu.index, pc, addr, access, what))

    def flush_address_space(self, vcpu: VCPU) -> None:
        """``satp`` write or ``sfence.vma``: drop the shadow table and the TLB."""
        self.mmu.flush(vcpu)

    address_space_changed = flush_address_space  # the name lab notebooks may know

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
