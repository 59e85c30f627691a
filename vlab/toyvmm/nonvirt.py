"""Why some ISAs are not classically virtualizable -- and two fixes (lab 02).

Popek & Goldberg: an ISA is trap-virtualizable if every *sensitive* instruction (one that reads
or changes privileged state) is *privileged* (traps when run deprivileged). Under Unicorn 2.1.4,
RISC-V ``rdcycle``/``rdinstret`` run in U-mode **without trapping** and return the *host's*
cycle counter: a guest reading them sees real time leak through, not its virtual time, and two
identical runs differ -- equivalence is broken. ``rdtime`` does trap, and the VMM returns
virtual time. (Real RISC-V hardware traps them when the supervisor clears ``scounteren``; the toy
VMM gets the same by putting a code hook on each one, :class:`~vlab.toyvmm.engine.CounterTraps`,
so the leak is seen with ``Machine(leak_host_counters=True)``.) x86 has the textbook case, shown
by :func:`x86_popf_at_cpl3`: at CPL3 ``popf`` silently ignores a change of the interrupt flag
instead of trapping.

Fixes on the leaky VMM: *paravirtualization* -- the guest asks the VMM (``HC_GET_TIME``
hypercall); or *scan-and-patch* (binary translation in miniature) -- :func:`patch_counter_reads`
rewrites each ``rdcycle``/``rdinstret`` into a read of a privileged CSR, which traps and is emulated.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import unicorn
from unicorn import x86_const as x86

from vlab.toyvmm.engine import open_unicorn
from vlab.toyvmm.isa import CSR

__all__ = ["patch_counter_reads", "is_counter_read", "PopfResult", "x86_popf_at_cpl3"]

_CSRRS, _LEAKY = 0b010, (CSR.CYCLE, CSR.INSTRET)


def is_counter_read(word: int) -> bool:
    """``csrrs rd, cycle|instret, x0``: sensitive, yet it does not trap in U-mode."""
    return (word & 0x7F == 0x73 and (word >> 12) & 7 == _CSRRS and (word >> 15) & 31 == 0
            and word >> 20 in _LEAKY)


def patch_counter_reads(code: bytes) -> tuple[bytes, list[int]]:
    """Replace every leaky counter read by a read of :attr:`CSR.PATCHED_COUNTER` (which traps).

    Scans aligned 32-bit words (the guests use no compressed instructions). A data word that
    happens to look like ``rdcycle`` would be patched too -- the classic hazard of static
    binary rewriting, and why real systems translate only code they have seen executing.

    :returns: the patched code and the byte offsets that were changed.
    """
    out = bytearray(code)
    patched = []
    for offset in range(0, len(out) - 3, 4):
        word = int.from_bytes(out[offset:offset + 4], "little")
        if is_counter_read(word):
            word = (word & 0xFFFFF) | (CSR.PATCHED_COUNTER << 20)
            out[offset:offset + 4] = word.to_bytes(4, "little")
            patched.append(offset)
    return bytes(out), patched


class PopfResult(NamedTuple):
    """What an x86 guest kernel deprivileged to CPL3 experiences (see :func:`x86_popf_at_cpl3`)."""

    flags_loaded: int    #: EFLAGS the guest asked ``popfd`` to load (IF cleared)
    flags_after: int     #: EFLAGS read back with ``pushfd``: IF is still set
    traps: list[tuple[int, int]]  #: (vector, eip) of every trap: only ``cli`` (#GP = 13)


def x86_popf_at_cpl3() -> PopfResult:
    """Run ``pushfd; and ~IF; popfd; pushfd; cli`` at CPL3 in Unicorn (x86, 32-bit).

    ``popfd`` silently ignores the IF change and does not trap, so a VMM running the guest kernel
    deprivileged never learns that the guest disabled interrupts; ``cli`` does trap (#GP).
    """
    uc: Any = open_unicorn(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    gdt_base, kernel, user, stack0, stack3 = 0x1000, 0x10000, 0x10100, 0x20000, 0x30000
    uc.mem_map(0, 0x100000)

    def descriptor(access: int) -> bytes:  # flat 4 GiB segment, 32-bit, 4 KiB granularity
        return struct.pack("<HHBBBB", 0xFFFF, 0, 0, access, 0xCF, 0)

    gdt = bytes(8) + b"".join(descriptor(a) for a in (0x9A, 0x92, 0xFA, 0xF2))  # ring 0/3 code, data
    uc.mem_write(gdt_base, gdt)
    uc.reg_write(x86.UC_X86_REG_GDTR, (0, gdt_base, len(gdt) - 1, 0))
    for reg, selector in ((x86.UC_X86_REG_CS, 0x08), (x86.UC_X86_REG_SS, 0x10), (x86.UC_X86_REG_DS, 0x10)):
        uc.reg_write(reg, selector)
    push = b"".join(b"\x68" + struct.pack("<I", v) for v in (0x23, stack3, 0x202, 0x1B, user))
    uc.mem_write(kernel, push + b"\xcf")  # push ss, esp, eflags (IF=1), cs, eip; iretd -> CPL3
    uc.mem_write(user, b"\x9c\x58\x25" + struct.pack("<I", 0xFFFFFDFF)  # pushfd; pop eax; and eax,~IF
                 + b"\x50\x9d\x9c\x5b\xfa\xf4")  # push eax; popfd; pushfd; pop ebx; cli; hlt
    uc.reg_write(x86.UC_X86_REG_ESP, stack0)
    traps: list[tuple[int, int]] = []

    def on_trap(uc: Any, vector: int, _: Any) -> None:
        traps.append((vector, uc.reg_read(x86.UC_X86_REG_EIP)))
        uc.emu_stop()  # one trap only: a second handled exception would hit unicorn #1883

    uc.hook_add(unicorn.UC_HOOK_INTR, on_trap)
    uc.emu_start(kernel, 0, count=100)
    return PopfResult(uc.reg_read(x86.UC_X86_REG_EAX), uc.reg_read(x86.UC_X86_REG_EBX), traps)
