"""Virtual devices: a UART reached by MMIO, and the hypercall interface (paravirtual devices).

The UART is a 16550-shaped register file at guest-physical :data:`UART_BASE`: a store to THR
(offset 0) appends a byte to the guest's captured output, a load from LSR (offset 5) says the
transmitter is empty. Each access is an MMIO exit. The timer has no registers of its own: it is
the virtual ``stimecmp`` CSR compared with *virtual* time (instructions executed), see
:mod:`vlab.toyvmm.machine`. Hypercalls are ``ecall`` from the guest kernel with ``a7`` = number.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from vlab.toyvmm.exits import Exit, refuse_withheld
from vlab.toyvmm.isa import CSR
from vlab.toyvmm.vcpu import SIE_STIE

__all__ = ["UART_BASE", "UART_LSR", "UART_LSR_IDLE", "UART_THR", "UART", "Hypercall", "handle_hypercall"]

UART_BASE = 0x1000_0000
#: UART register offsets: transmit holding (a store outputs a byte), line status
UART_THR, UART_LSR = 0, 5
#: line status "transmitter empty and idle" (bits 5 and 6): a driver may send at once
UART_LSR_IDLE = 0x60
_A0, _A7 = 10, 17
_MAX_WRITE = 4096


class UART:
    """Per-guest serial port; :attr:`text` is everything the guest printed.

    Its registers are emulated by the MMIO exit handlers (:mod:`vlab.toyvmm.handlers`), which lab 02
    has the student write.
    """

    #: The bytes the guest printed, appended by the handlers (see :attr:`vlab.toyvmm.vcpu.VCPU.REMOTE_WRITABLE`).
    REMOTE_WRITABLE: ClassVar[frozenset[str]] = frozenset({"output"})

    def __init__(self) -> None:
        self.output = bytearray()

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")


class Hypercall(enum.IntEnum):
    """Hypercall numbers (register ``a7``); arguments in ``a0``/``a1``, result in ``a0``."""

    NOP = 0
    PUTCHAR = 1          #: a0 = byte
    CONSOLE_WRITE = 2    #: a0 = guest-physical address, a1 = length; returns length or -1
    YIELD = 3            #: give up the rest of the time slice
    SET_TIMER = 4        #: a0 = absolute virtual time for the timer interrupt
    SHUTDOWN = 5         #: a0 = exit code
    BALLOON_GIVE = 6     #: a0 = gpa, a1 = pages; returns pages handed to the host
    BALLOON_TAKE = 7     #: a0 = gpa, a1 = pages; returns pages given back to the guest
    GET_TIME = 8         #: returns virtual time (the paravirtual fix for ``rdcycle``)


def handle_hypercall(exit: Exit) -> None:
    """Default :attr:`ExitReason.HYPERCALL` handler."""
    vcpu = exit.vcpu
    guest = vcpu.guest
    number = vcpu.read_reg(_A7)
    result = 0
    if number == 0:  # Hypercall.NOP, tested first: it is the hot path of the trap benchmarks
        vcpu.write_reg(_A0, 0)
        return
    a0, a1 = vcpu.read_reg(_A0), vcpu.read_reg(_A0 + 1)
    if number in (Hypercall.PUTCHAR, Hypercall.CONSOLE_WRITE):
        refuse_withheld(exit, "the console hypercalls (PUTCHAR, CONSOLE_WRITE)")
    if number == Hypercall.PUTCHAR:
        guest.uart.output.append(a0 & 0xFF)
    elif number == Hypercall.CONSOLE_WRITE:
        data = guest.memory.read(a0, min(a1, _MAX_WRITE))
        if data is None:
            exit.vmm.record_violation(vcpu, exit.pc, a0, "read", "hypercall buffer outside guest RAM")
            result = -1
        else:
            guest.uart.output += data
            result = len(data)
    elif number == Hypercall.YIELD:
        vcpu.write_reg(_A0, 0)  # before request_stop saves the context, or the guest never sees the result
        exit.vmm.request_stop("yield")
        return
    elif number == Hypercall.SET_TIMER:
        vcpu.csrs[CSR.STIMECMP] = a0
        vcpu.csrs[CSR.SIE] |= SIE_STIE
        vcpu.write_reg(_A0, 0)
        vcpu.take_interrupt(exit.vmm.now)  # a deadline in the past fires at once
        return
    elif number == Hypercall.SHUTDOWN:
        guest.halt(a0)
    elif number == Hypercall.BALLOON_GIVE:
        result = guest.memory.balloon_give(a0, a1)
        exit.vmm.memory_changed(guest)
    elif number == Hypercall.BALLOON_TAKE:
        result = guest.memory.balloon_take(a0, a1)  # fewer if the host has run out of frames
        exit.vmm.memory_changed(guest)
    elif number == Hypercall.GET_TIME:
        result = exit.vmm.now
    else:
        result = -1
    vcpu.write_reg(_A0, result)

