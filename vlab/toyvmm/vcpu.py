"""A virtual CPU: saved registers, the *virtual* privileged state, and virtual trap entry/return.

The real CPU (Unicorn) always runs the guest in U-mode. What the guest kernel believes -- that
it is in S-mode, what its ``sstatus``/``stvec``/``satp`` hold -- lives here, in :attr:`VCPU.csrs`
and :attr:`VCPU.mode`. Because Unicorn performs no architectural trap entry for us, delivering a
trap to the guest (:meth:`VCPU.inject_trap`) and ``sret`` (:meth:`VCPU.sret`) are done here by
hand, exactly as the privileged spec describes them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from unicorn.riscv_const import UC_RISCV_REG_PC, UC_RISCV_REG_X0

from vlab.toyvmm.isa import CSR

if TYPE_CHECKING:
    from vlab.toyvmm.machine import Guest

__all__ = ["VCPU", "VCPUState", "Mode", "Registers", "SSTATUS_SIE", "SSTATUS_SPIE", "SSTATUS_SPP", "SSTATUS_SUM",
           "SSTATUS_MXR", "SIE_SSIE", "SIE_STIE", "INTERRUPT", "Cause"]

MASK64 = (1 << 64) - 1
SSTATUS_SIE, SSTATUS_SPIE, SSTATUS_SPP, SSTATUS_SUM, SSTATUS_MXR = 1 << 1, 1 << 5, 1 << 8, 1 << 18, 1 << 19
#: Writable sstatus bits. FS (13-14) is absent: there is no F/D, so FS reads 0 and stays 0.
_SSTATUS_WRITABLE = SSTATUS_SIE | SSTATUS_SPIE | SSTATUS_SPP | SSTATUS_SUM | SSTATUS_MXR
_SSTATUS_RESET = 2 << 32  #: UXL = 2: U-mode is 64-bit (read-only)
SIE_SSIE, SIE_STIE = 1 << 1, 1 << 5
_SIE_WRITABLE = SIE_SSIE | SIE_STIE | (1 << 9)
_SIP_WRITABLE = SIE_SSIE  #: only SSIP; STIP is the timer's (stimecmp), SEIP a device's
_SENVCFG_WRITABLE = 1  #: FIOM; the fields of absent extensions read 0
INTERRUPT = 1 << 63


class Cause:
    """``scause`` values the VMM injects into the guest."""

    FETCH_ACCESS, ILLEGAL, BREAKPOINT, LOAD_ACCESS, STORE_ACCESS, ECALL_U = 1, 2, 3, 5, 7, 8
    FETCH_PAGE, LOAD_PAGE, STORE_PAGE = 12, 13, 15
    SOFTWARE, TIMER = INTERRUPT | 1, INTERRUPT | 5


class Mode(enum.IntEnum):
    """The privilege the guest *believes* it runs at."""

    USER = 0
    SUPERVISOR = 1


class VCPUState(enum.Enum):
    RUNNABLE = "runnable"
    BLOCKED = "blocked"   #: in ``wfi`` until its timer fires
    HALTED = "halted"


class Registers(Protocol):
    """The CPU's registers by Unicorn number (:class:`~vlab.toyvmm.engine.FastRegs`)."""

    def read(self, reg: int) -> int: ...

    def write(self, reg: int, value: int) -> None: ...


class VCPU:
    """One virtual CPU of a guest, emulated in Python (a real QEMU vCPU is a :class:`vlab.qemu.VCpuThread`).

    :ivar csrs: the virtual supervisor CSRs (what the guest reads and writes).
    :ivar mode: the virtual privilege (:class:`Mode`).
    :ivar shadow: shadow page table of this vCPU's address space: virtual page -> (gpa page, PTE bits,
        guest-physical address of the PTE).
    :ivar wake_latencies: virtual instructions from each timer wake-up to being scheduled.
    """

    #: What a handler changes directly rather than through a method: the grader lets student code assign
    #: these (and change their contents) when it runs apart from the VMM (:mod:`vlab.grading.remote`).
    REMOTE_WRITABLE: ClassVar[frozenset[str]] = frozenset({"state", "shadow", "csrs"})
    #: What never changes in a vCPU's life: sent with its first reference, so reading it costs no request.
    REMOTE_FIXED: ClassVar[frozenset[str]] = frozenset({"guest", "index"})

    def __init__(self, guest: Guest, index: int, regs: Registers) -> None:
        self.guest = guest
        self.index = index
        self.regs = regs
        #: the guest PC while the vCPU is parked in the sink (see Machine.request_stop), else None
        self.parked_pc: int | None = None
        self.csrs: dict[int, int] = {CSR.SSTATUS: _SSTATUS_RESET, CSR.SIE: 0, CSR.STVEC: 0, CSR.SCOUNTEREN: 0,
                                     CSR.SENVCFG: 0, CSR.SSCRATCH: 0, CSR.SEPC: 0, CSR.SCAUSE: 0, CSR.STVAL: 0,
                                     CSR.SIP: 0, CSR.STIMECMP: MASK64, CSR.SATP: 0}
        self.mode = Mode.SUPERVISOR
        self.state = VCPUState.RUNNABLE
        self.context: Any = None
        self.shadow: dict[int, tuple[int, int, int]] = {}
        self.pending_fault: tuple[int, str, bool] | None = None  # (addr, access, violation)
        self.woken_at: int | None = None
        self.wake_latencies: list[int] = []
        self.run_time = 0

    def __repr__(self) -> str:
        return f"<VCPU {self.guest.name}/{self.index} {self.state.value} mode={self.mode.name}>"

    @property
    def runnable(self) -> bool:
        return self.state is VCPUState.RUNNABLE

    # -- registers (valid while this vCPU is loaded into its guest's Unicorn) ---------------
    def read_reg(self, index: int) -> int:
        """General-purpose register ``x<index>`` (x0 reads as 0)."""
        if self.guest.loaded is not self:
            self.guest.load(self)
        return self.regs.read(UC_RISCV_REG_X0 + index) if index else 0

    def write_reg(self, index: int, value: int) -> None:
        """Set ``x<index>``; writes to x0 are ignored, as in hardware."""
        if index:
            if self.guest.loaded is not self:
                self.guest.load(self)
            self.regs.write(UC_RISCV_REG_X0 + index, value)

    @property
    def pc(self) -> int:
        self.guest.load(self)
        return self.regs.read(UC_RISCV_REG_PC)

    def set_pc(self, value: int) -> None:
        self.guest.load(self)
        self.regs.write(UC_RISCV_REG_PC, value)

    # -- virtual privileged state -------------------------------------------------------------
    def csr_write(self, number: int, value: int) -> None:
        """Store ``value`` into a virtual CSR, keeping only the bits the spec makes writable."""
        value &= MASK64
        if number == CSR.SSTATUS:
            old = self.csrs[CSR.SSTATUS]
            value = (old & ~_SSTATUS_WRITABLE) | (value & _SSTATUS_WRITABLE)
            if (old ^ value) & (SSTATUS_SUM | SSTATUS_MXR):
                self.guest.flush_tlb()  # the TLB holds permissions computed with the old SUM/MXR
        elif number == CSR.SIE:
            value &= _SIE_WRITABLE
        elif number == CSR.SIP:
            value = (self.csrs[CSR.SIP] & ~_SIP_WRITABLE) | (value & _SIP_WRITABLE)
        elif number == CSR.SENVCFG:
            value &= _SENVCFG_WRITABLE
        elif number == CSR.STVEC:
            value &= ~2  # MODE 0 (direct) or 1 (vectored); 2 and 3 are reserved
        elif number == CSR.SEPC:
            value &= ~1  # IALIGN = 16: compressed code is executed
        elif number == CSR.SATP and value >> 60 not in (0, 8, 9):
            return  # WARL: unsupported modes leave satp unchanged
        self.csrs[number] = value

    def set_mode(self, mode: Mode) -> None:
        if mode != self.mode:
            self.mode = mode
            self.guest.flush_tlb()  # user and supervisor see different permissions

    def inject_trap(self, cause: int, tval: int, epc: int) -> None:
        """Virtual trap entry: what hardware would do on a trap into S-mode."""
        csrs = self.csrs
        status = csrs[CSR.SSTATUS]
        spie = SSTATUS_SPIE if status & SSTATUS_SIE else 0
        spp = SSTATUS_SPP if self.mode == Mode.SUPERVISOR else 0
        csrs[CSR.SSTATUS] = (status & ~(SSTATUS_SIE | SSTATUS_SPIE | SSTATUS_SPP)) | spie | spp
        csrs[CSR.SEPC], csrs[CSR.SCAUSE], csrs[CSR.STVAL] = epc & ~1 & MASK64, cause, tval & MASK64
        self.set_mode(Mode.SUPERVISOR)
        stvec = csrs[CSR.STVEC]
        vector = 4 * (cause & 0xFFF) if stvec & 1 and cause & INTERRUPT else 0  # vectored mode: interrupts only
        self.set_pc((stvec & ~3) + vector)

    def sret(self) -> None:
        """Virtual ``sret``: back to the mode in SPP, at ``sepc``, restoring SIE from SPIE."""
        status = self.csrs[CSR.SSTATUS]
        mode = Mode.SUPERVISOR if status & SSTATUS_SPP else Mode.USER
        sie = SSTATUS_SIE if status & SSTATUS_SPIE else 0
        self.csrs[CSR.SSTATUS] = (status & ~(SSTATUS_SIE | SSTATUS_SPP)) | sie | SSTATUS_SPIE
        self.set_mode(mode)
        self.set_pc(self.csrs[CSR.SEPC])

    def pending(self, now: int) -> int:
        """``sip`` as the guest reads it: its software bit (SSIP) and the timer's (STIP = now >= stimecmp),
        whatever ``sie`` says."""
        return self.csrs[CSR.SIP] | (SIE_STIE if now >= self.csrs[CSR.STIMECMP] else 0)

    def timer_due(self, now: int) -> bool:
        """The virtual timer has fired and ``sie.STIE`` lets it wake the vCPU."""
        return bool(self.csrs[CSR.SIE] & SIE_STIE) and now >= self.csrs[CSR.STIMECMP]

    def wakeup_pending(self, now: int) -> bool:
        """An interrupt is pending and enabled in ``sie``: ``wfi`` returns (``sstatus.SIE`` does not matter)."""
        return bool(self.pending(now) & self.csrs[CSR.SIE])

    def interrupt_cause(self, now: int) -> int | None:
        """The interrupt the guest takes now (``scause``), or ``None``: pending, enabled in ``sie``, and
        ``sstatus.SIE`` set or the vCPU in user mode. A software interrupt goes before the timer's."""
        if self.mode == Mode.SUPERVISOR and not self.csrs[CSR.SSTATUS] & SSTATUS_SIE:
            return None
        ready = self.pending(now) & self.csrs[CSR.SIE]
        if not ready:
            return None
        return Cause.SOFTWARE if ready & SIE_SSIE else Cause.TIMER

    def interrupt_deliverable(self, now: int) -> bool:
        """An interrupt the guest takes now (see :meth:`interrupt_cause`)."""
        return self.interrupt_cause(now) is not None

    def take_interrupt(self, now: int) -> bool:
        """Interrupt entry right now if one is deliverable (after the guest enabled one: ``csrs sstatus``,
        ``sie``, ``sip``, ``stimecmp`` or ``sret``); the interrupted instruction is the one at the PC."""
        cause = self.interrupt_cause(now)
        if cause is None:
            return False
        self.inject_trap(cause, 0, self.pc)
        return True

    @property
    def timer_deadline(self) -> int | None:
        """When the armed timer fires (virtual instructions), or ``None``."""
        if self.csrs[CSR.SIE] & SIE_STIE and self.csrs[CSR.STIMECMP] != MASK64:
            return self.csrs[CSR.STIMECMP]
        return None
