"""The default exit handlers: trap-and-emulate, one function per :class:`ExitReason`.

Each handler gets an :class:`~vlab.toyvmm.exits.Exit` and emulates the instruction or event
against the vCPU's *virtual* state; when it returns, the guest resumes at the vCPU's PC (already
past the trapping instruction, as Unicorn leaves it). A lab swaps any of these for its own.
"""

from __future__ import annotations

from vlab.toyvmm.devices import UART_LSR, UART_LSR_IDLE, UART_THR, handle_hypercall
from vlab.toyvmm.exits import Exit, ExitHandler, ExitReason, refuse_withheld
from vlab.toyvmm.isa import CSR, HPMCOUNTER3, HPMCOUNTER31
from vlab.toyvmm.mmu import walk
from vlab.toyvmm.vcpu import Cause, VCPUState

__all__ = ["DEFAULT_HANDLERS", "counter", "csr_access", "wfi", "sret", "sfence", "syscall", "mmio_read",
           "mmio_write", "page_fault", "shadow_fill", "illegal_access", "illegal_insn", "timer"]

_SUPERVISOR_CSRS = frozenset({CSR.SSTATUS, CSR.SIE, CSR.STVEC, CSR.SCOUNTEREN, CSR.SENVCFG, CSR.SSCRATCH,
                              CSR.SEPC, CSR.SCAUSE, CSR.STVAL, CSR.STIMECMP, CSR.SATP})  # sip: computed
_TIME_COUNTERS = frozenset({CSR.CYCLE, CSR.TIME, CSR.INSTRET, CSR.PATCHED_COUNTER})
_SIP, _SATP = CSR.SIP, CSR.SATP
#: CSRs whose write can make a pending interrupt deliverable at once
_INTERRUPT_CSRS = frozenset({CSR.SSTATUS, CSR.SIE, CSR.SIP, CSR.STIMECMP})
_EBREAK, _C_EBREAK = 0x00100073, 0x9002
#: access -> scause of (a page fault: the guest's own table refused, an access fault: outside guest RAM)
_FAULT_CAUSE = {"fetch": (Cause.FETCH_PAGE, Cause.FETCH_ACCESS), "read": (Cause.LOAD_PAGE, Cause.LOAD_ACCESS),
                "write": (Cause.STORE_PAGE, Cause.STORE_ACCESS)}


def csr_access(exit: Exit) -> None:
    """``csrr*``: read the virtual CSR into ``rd``, apply the write/set/clear to the virtual CSR."""
    vcpu, insn = exit.vcpu, exit.insn
    assert insn is not None
    csr = insn.csr
    if csr in vcpu.csrs:
        refuse_withheld(exit, "a virtual CSR access")
    if csr in _SUPERVISOR_CSRS:
        old: int | None = vcpu.csrs[csr]
    elif csr == _SIP:
        old = vcpu.pending(exit.vmm.now)
    else:
        old = counter(csr, exit.vmm.now)
    if old is None or (insn.writes and csr >> 10 == 3):  # unknown, or a write to a read-only CSR
        vcpu.inject_trap(Cause.ILLEGAL, exit.word, exit.pc)
        return
    if insn.writes:
        source = insn.rs1 if insn.immediate else vcpu.read_reg(insn.rs1)
        new = source if insn.op == 1 else old | source if insn.op == 2 else old & ~source
        vcpu.csr_write(csr, new)
        if csr == _SATP:
            exit.vmm.flush_address_space(vcpu)
    vcpu.write_reg(insn.rd, old)
    if insn.writes and csr in _INTERRUPT_CSRS:
        vcpu.take_interrupt(exit.vmm.now)


def counter(csr: int, now: int) -> int | None:
    """What reading counter ``csr`` gives at virtual time ``now`` (``None``: not a counter). Cycles,
    instructions and time are all virtual time -- instructions executed, never the host clock; the
    hpm counters count no event here, so read 0."""
    if csr in _TIME_COUNTERS:
        return now
    return 0 if HPMCOUNTER3 <= csr <= HPMCOUNTER31 else None


def wfi(exit: Exit) -> None:
    """``wfi``: block the vCPU until an interrupt enabled in ``sie`` is pending (no-op if one is)."""
    refuse_withheld(exit, "wfi")
    vcpu = exit.vcpu
    now = exit.vmm.now
    if vcpu.wakeup_pending(now):
        vcpu.take_interrupt(now)
    else:
        vcpu.state = VCPUState.BLOCKED
        exit.vmm.request_stop("blocked")


def sret(exit: Exit) -> None:
    exit.vcpu.sret()
    exit.vcpu.take_interrupt(exit.vmm.now)  # sret may set SIE with an interrupt pending


def sfence(exit: Exit) -> None:
    exit.vmm.flush_address_space(exit.vcpu)


def syscall(exit: Exit) -> None:
    """``ecall`` from the guest's user mode is the guest kernel's business: reflect it."""
    exit.vcpu.inject_trap(Cause.ECALL_U, 0, exit.pc)


def mmio_read(exit: Exit) -> None:
    """A load from the UART: the line status register says "transmitter idle", the rest read 0."""
    refuse_withheld(exit, "the UART's registers")
    exit.value = UART_LSR_IDLE if exit.addr == UART_LSR else 0


def mmio_write(exit: Exit) -> None:
    """A store to the UART: a byte written to the transmit register is output."""
    refuse_withheld(exit, "the UART's registers")
    if exit.addr == UART_THR:
        exit.vcpu.guest.uart.output.append(exit.value & 0xFF)


def page_fault(exit: Exit) -> None:
    """The guest's own page table refused the access: deliver a page fault to the guest kernel."""
    exit.vcpu.inject_trap(_FAULT_CAUSE[exit.access][0], exit.addr, exit.pc)


def illegal_access(exit: Exit) -> None:
    """An isolation violation (already recorded): deliver an access fault, or terminate."""
    guest = exit.vcpu.guest
    if exit.vmm.on_violation == "kill":
        guest.kill("isolation violation")
    else:
        exit.vcpu.inject_trap(_FAULT_CAUSE[exit.access][1], exit.addr, exit.pc)


def illegal_insn(exit: Exit) -> None:
    """An instruction the guest's current mode may not execute (or an unknown one): reflect it --
    except ``ebreak`` (a breakpoint) and a user-mode counter read that ``scounteren`` allows."""
    vcpu, word, insn = exit.vcpu, exit.word, exit.insn
    if word == _EBREAK or word & 0xFFFF == _C_EBREAK:
        vcpu.inject_trap(Cause.BREAKPOINT, exit.pc, exit.pc)
        return
    if (insn is not None and insn.kind == "csr" and not insn.writes
            and (value := counter(insn.csr, exit.vmm.now)) is not None
            and vcpu.csrs[CSR.SCOUNTEREN] >> (insn.csr & 31) & 1):
        vcpu.write_reg(insn.rd, value)
        return
    vcpu.inject_trap(Cause.ILLEGAL, word if word & 3 == 3 else word & 0xFFFF, exit.pc)


def timer(exit: Exit) -> None:
    """Inject the pending interrupt (the timer's, or a software one) at the current PC."""
    exit.vcpu.inject_trap(exit.vcpu.interrupt_cause(exit.vmm.now) or Cause.TIMER, 0, exit.pc)


def shadow_fill(exit: Exit) -> None:
    """Shadow paging's hidden fault: walk the guest table and fill the shadow entry.

    When the guest table itself refuses, nothing is filled and the TLB-fill hook turns the
    access into a :attr:`ExitReason.PAGE_FAULT` for the guest.
    """
    refuse_withheld(exit, "the shadow-table fill")
    vcpu = exit.vcpu
    result = walk(vcpu.guest.memory, vcpu.csrs[CSR.SATP], exit.addr)
    exit.vmm.paging_stats.guest_pte_reads += result.pte_reads
    if result.gpa is not None and result.pte_gpa is not None:
        vcpu.shadow[exit.addr >> 12] = (result.gpa >> 12, result.flags, result.pte_gpa)


DEFAULT_HANDLERS: dict[ExitReason, ExitHandler] = {
    ExitReason.CSR_READ: csr_access, ExitReason.CSR_WRITE: csr_access, ExitReason.WFI: wfi,
    ExitReason.SRET: sret, ExitReason.SFENCE: sfence, ExitReason.HYPERCALL: handle_hypercall,
    ExitReason.SYSCALL: syscall, ExitReason.MMIO_READ: mmio_read, ExitReason.MMIO_WRITE: mmio_write,
    ExitReason.PAGE_FAULT: page_fault, ExitReason.SHADOW_FILL: shadow_fill,
    ExitReason.ILLEGAL_ACCESS: illegal_access, ExitReason.ILLEGAL_INSN: illegal_insn, ExitReason.TIMER: timer,
}
