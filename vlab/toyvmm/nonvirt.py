"""Why some ISAs are not classically virtualizable -- and two fixes (lab 02).

Popek & Goldberg: an ISA is trap-virtualizable if every *sensitive* instruction (one that reads
or changes privileged state) is *privileged* (traps when run deprivileged). Under Unicorn 2.1.4,
RISC-V ``rdcycle``/``rdinstret`` run in U-mode **without trapping** and return the *host's*
cycle counter: a guest reading them sees real time leak through, not its virtual time, and two
identical runs differ -- equivalence is broken. (x86 has the textbook case: ``pushf``/``popf``
at CPL3 silently ignore the interrupt flag instead of trapping.) ``rdtime`` does trap, and the
VMM returns virtual time.

Fixes: *paravirtualization* -- the guest asks the VMM (``HC_GET_TIME`` hypercall); or
*scan-and-patch* (binary translation in miniature) -- :func:`patch_counter_reads` rewrites each
``rdcycle``/``rdinstret`` into a read of a privileged CSR, which traps and is emulated.
"""

from __future__ import annotations

from vlab.toyvmm.isa import CSR

__all__ = ["patch_counter_reads", "is_counter_read"]

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
