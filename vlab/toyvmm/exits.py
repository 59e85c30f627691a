"""VM exits: why the guest left the CPU, the exit object handlers receive, and the handler table.

Every trap from the guest becomes an :class:`Exit` with an :class:`ExitReason`. The VMM counts
it, optionally logs it (:class:`ExitRecord`: virtual time, guest, vCPU, reason, pc, instruction)
and calls the handler registered for the reason in :class:`HandlerTable`. A lab replaces one
handler at a time::

    def my_csr_read(exit: Exit) -> None:
        exit.vcpu.write_reg(exit.insn.rd, exit.vcpu.csrs.get(exit.insn.csr, 0))

    machine.handlers[ExitReason.CSR_READ] = my_csr_read      # or .register(...), .reset(...)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from unicorn.riscv_const import UC_RISCV_REG_PC

from vlab.errors import VlabError
from vlab.toyvmm.isa import Insn, disassemble

if TYPE_CHECKING:
    from vlab.toyvmm.machine import Guest
    from vlab.toyvmm.mmu import PagingStats
    from vlab.toyvmm.vcpu import VCPU

__all__ = ["ExitReason", "Exit", "ExitHandler", "ExitRecord", "HandlerTable", "Services", "count_names",
           "refuse_withheld"]


class ExitReason(enum.IntEnum):
    """Why control came back to the VMM."""

    CSR_READ = 0        #: guest kernel read a privileged CSR
    CSR_WRITE = 1       #: guest kernel wrote (or read-and-wrote) a privileged CSR
    WFI = 2             #: guest kernel idles until an interrupt
    SRET = 3            #: guest kernel returns from its trap handler
    SFENCE = 4          #: guest kernel flushes its TLB (sfence.vma)
    HYPERCALL = 5       #: ecall from the guest kernel: a request to the VMM
    SYSCALL = 6         #: ecall from the guest's user mode: reflected to the guest kernel
    MMIO_READ = 7       #: load from a device register (the UART)
    MMIO_WRITE = 8      #: store to a device register
    PAGE_FAULT = 9      #: the guest's own page table forbids the access: reflected to the guest
    SHADOW_FILL = 10    #: shadow paging: a hidden fault to fill the shadow page table
    ILLEGAL_ACCESS = 11 #: guest-physical address outside the guest's memory: an isolation violation
    ILLEGAL_INSN = 12   #: instruction the guest may not execute: reflected to the guest kernel
    TIMER = 13          #: the VMM injects a virtual timer interrupt


class Services(Protocol):
    """What a handler may ask of the VMM (``exit.vmm``; the :class:`~vlab.toyvmm.machine.Machine`)."""

    @property
    def now(self) -> int:
        """Virtual time: instructions executed so far."""

    @property
    def on_violation(self) -> str:
        """``"fault"`` or ``"kill"``: what an isolation violation costs the guest."""

    @property
    def paging_stats(self) -> PagingStats:
        """The paging counters (shadow walks are counted by the handler that does them)."""

    def request_stop(self, reason: str) -> None:
        """End the vCPU's chunk and slice now (``yield``, ``blocked``, ``halted``...)."""

    def record_violation(self, vcpu: VCPU, pc: int, addr: int, access: str, what: str) -> None:
        """Add an entry to the isolation audit trail."""

    def flush_address_space(self, vcpu: VCPU) -> None:
        """``satp`` write or ``sfence.vma``: drop the shadow table and the TLB."""

    def memory_changed(self, guest: Guest) -> None:
        """The guest's p2m changed (balloon): no stale translation may stay."""


class Exit:
    """One VM exit, handed to the handler for its reason.

    :ivar reason: the :class:`ExitReason`.
    :ivar vcpu: the virtual CPU that exited (``vcpu.guest`` is its guest).
    :ivar pc: guest virtual address of the instruction that caused the exit (for MMIO exits:
        where Unicorn reports the PC, which may be the start of the translation block).
    :ivar insn: the decoded SYSTEM instruction, for CSR/WFI/SRET/SFENCE exits.
    :ivar word: the raw 32-bit instruction word (0 when not fetched).
    :ivar addr: faulting virtual address (faults) or device offset (MMIO).
    :ivar size: access size in bytes (MMIO).
    :ivar value: MMIO value written, or set by an MMIO-read handler as the result.
    :ivar access: ``"read"``, ``"write"`` or ``"fetch"`` for faults.
    """

    __slots__ = ("_pc", "access", "addr", "insn", "reason", "size", "value", "vcpu", "word")
    #: An MMIO-read handler's result (see :attr:`vlab.toyvmm.vcpu.VCPU.REMOTE_WRITABLE`).
    REMOTE_WRITABLE: ClassVar[frozenset[str]] = frozenset({"value"})
    #: Set when the exit is made, never changed (see :attr:`vlab.toyvmm.vcpu.VCPU.REMOTE_FIXED`).
    REMOTE_FIXED: ClassVar[frozenset[str]] = frozenset({"reason", "vcpu", "insn", "word", "addr", "size", "access"})

    def __init__(self, reason: ExitReason, vcpu: VCPU, pc: int | None = None, insn: Insn | None = None,
                 word: int = 0, addr: int = 0, size: int = 0, value: int = 0, access: str = "") -> None:
        self.reason = reason
        self.vcpu = vcpu
        self._pc = pc
        self.insn = insn
        self.word = word
        self.addr = addr
        self.size = size
        self.value = value
        self.access = access

    @property
    def pc(self) -> int:
        """Read on first use (a register read costs as much as the rest of a fast exit)."""
        if self._pc is None:
            past = 0 if self.reason in (ExitReason.MMIO_READ, ExitReason.MMIO_WRITE) else 4
            parked = self.vcpu.parked_pc  # a handler stopped the vCPU: the engine PC is the sink's
            pc = parked if parked is not None else self.vcpu.regs.read(UC_RISCV_REG_PC)
            self._pc = pc - past  # traps: Unicorn is already past it
        return self._pc

    @property
    def vmm(self) -> Services:
        """The VMM's services for this exit's handler."""
        return self.vcpu.guest.machine

    def __repr__(self) -> str:
        return f"<Exit {self.reason.name} guest={self.vcpu.guest.name} vcpu={self.vcpu.index} pc={self.pc:#x}>"


def count_names(counts: list[int]) -> dict[str, int]:
    """Exit counts indexed by reason number -> ``{reason name: count}`` for the reasons that occurred."""
    return {r.name: n for r, n in zip(ExitReason, counts, strict=False) if n}


#: A handler receives the exit and emulates it by changing vCPU / guest / device state.
ExitHandler = Callable[[Exit], None]


class ExitRecord(NamedTuple):
    """One line of the exit log (the audit trail)."""

    time: int
    guest: str
    vcpu: int
    reason: ExitReason
    pc: int
    word: int
    addr: int

    @property
    def text(self) -> str:
        """The instruction, disassembled by capstone (empty when the word was not fetched)."""
        return disassemble(self.word, self.pc) if self.word else ""

    def __str__(self) -> str:
        return (f"t={self.time:>10} {self.guest}/{self.vcpu} {self.reason.name:<14} "
                f"pc={self.pc:#x} {self.text}" + (f" addr={self.addr:#x}" if self.addr else ""))


class HandlerTable(dict[ExitReason, ExitHandler]):
    """Exit reason -> handler, with the defaults remembered so a lab can put them back."""

    def __init__(self, defaults: dict[ExitReason, ExitHandler]) -> None:
        missing = set(ExitReason) - set(defaults)
        if missing:
            raise VlabError("every exit reason needs a default handler", field="defaults",
                            value=sorted(r.name for r in missing))
        super().__init__(defaults)
        self.defaults = dict(defaults)
        #: reasons whose emulation a lab gave to the student: their default handlers refuse to do
        #: the student's part (:func:`refuse_withheld`), so a handler that only delegates is no answer
        self.withheld: set[ExitReason] = set()
        #: handlers indexed by reason number: the trap path's lookup (enum hashing is slow)
        self.by_number: list[ExitHandler] = [defaults[r] for r in ExitReason]

    def __setitem__(self, reason: ExitReason, handler: ExitHandler) -> None:
        if not isinstance(reason, ExitReason):
            raise VlabError("handlers are keyed by ExitReason", field="reason", value=reason,
                            fix="e.g. machine.handlers[ExitReason.CSR_READ] = my_handler")
        if not callable(handler):
            raise VlabError("a handler must be callable as handler(exit)", field=reason.name,
                            value=handler)
        super().__setitem__(reason, handler)
        self.by_number[reason] = handler

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update`` would bypass :meth:`__setitem__` (and leave :attr:`by_number` stale)."""
        for reason, handler in dict(*args, **kwargs).items():
            self[reason] = handler

    def register(self, reason: ExitReason, handler: ExitHandler) -> ExitHandler:
        """Install ``handler`` for ``reason``; returns the handler it replaces."""
        previous = self[reason]
        self[reason] = handler
        return previous

    def withhold(self, reason: ExitReason, handler: ExitHandler) -> None:
        """Install a student's ``handler`` for ``reason``; the default no longer does that part."""
        self[reason] = handler
        self.withheld.add(reason)

    def reset(self, reason: ExitReason | None = None) -> None:
        """Put the default handler back for ``reason`` (all reasons when ``None``)."""
        for key in [reason] if reason is not None else list(ExitReason):
            self[key] = self.defaults[key]
            self.withheld.discard(key)


def refuse_withheld(exit: Exit, what: str) -> None:
    """Raise if a lab gave ``what`` (the part of ``exit``'s emulation the student writes) to the student.

    Called by the default handlers before they do that part: delegating to them is not an answer.
    """
    if exit.reason in exit.vcpu.guest.machine.handlers.withheld:
        raise VlabError(f"{what} is the part you write in this lab: the VMM's default handler does not do it "
                        "for you", field=exit.reason.name, value=what,
                        fix="emulate it in your handler (see the question's steps); delegate only what the "
                            "question says the default still handles")
