"""Decoding the privileged RISC-V instructions the VMM emulates (and disassembling for display).

When a guest instruction traps, Unicorn has already moved the PC past it and performed no
architectural trap entry, so the VMM fetches the 32-bit word itself and decodes it here.
Only the SYSTEM opcode matters: CSR accesses, ``ecall``, ``sret``, ``wfi``, ``sfence.vma``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

__all__ = ["Insn", "decode", "disassemble", "CSR", "CSR_NAMES", "HPMCOUNTER3", "HPMCOUNTER31", "runs_natively"]


class CSR:
    """CSR numbers the VMM virtualizes (supervisor level, plus counters)."""

    SSTATUS = 0x100
    SIE = 0x104
    STVEC = 0x105
    SCOUNTEREN = 0x106
    SENVCFG = 0x10A
    SSCRATCH = 0x140
    SEPC = 0x141
    SCAUSE = 0x142
    STVAL = 0x143
    SIP = 0x144
    STIMECMP = 0x14D
    SATP = 0x180
    CYCLE = 0xC00
    TIME = 0xC01
    INSTRET = 0xC02
    #: Custom S-mode CSR that scan-and-patch substitutes for ``rdcycle``/``rdinstret``.
    PATCHED_COUNTER = 0x5C0


CSR_NAMES = {v: k.lower() for k, v in vars(CSR).items() if k.isupper()}
#: The hardware performance counters hpmcounter3..31 (read as 0 here: no events are counted).
HPMCOUNTER3, HPMCOUNTER31 = 0xC03, 0xC1F


def runs_natively(word: int) -> bool:
    """A counter read Unicorn 2.1.4 executes in U-mode instead of trapping, whatever ``scounteren``
    says: ``csrrs``/``csrrc`` (any ``rs1``: QEMU 5.0 checks the register's value, not its number) or
    ``csrrsi``/``csrrci`` with 0, on ``cycle``, ``instret`` or ``hpmcounter3..31``. (``time`` traps:
    Unicorn has no timer; the write forms trap: the counters are read-only.)"""
    funct3, csr = (word >> 12) & 7, word >> 20
    return (word & 0x7F == 0x73 and funct3 in (2, 3, 6, 7) and CSR.CYCLE <= csr <= HPMCOUNTER31
            and csr != CSR.TIME and (funct3 < 4 or not (word >> 15) & 31))


class Insn(NamedTuple):
    """A decoded SYSTEM instruction.

    :param kind: ``csr``, ``ecall``, ``ebreak``, ``sret``, ``mret``, ``wfi``, ``sfence`` or ``other``.
    :param op: for CSRs 1 = read-write, 2 = set bits, 3 = clear bits.
    :param immediate: the source is the 5-bit ``rs1`` field itself, not register ``rs1``.
    :param writes: the instruction modifies the CSR (csrrs/csrrc with x0/0 only read).
    """

    kind: str
    rd: int = 0
    rs1: int = 0
    csr: int = 0
    op: int = 0
    immediate: bool = False
    writes: bool = False


_PRIV = {0x00000073: "ecall", 0x00100073: "ebreak", 0x10200073: "sret",
         0x30200073: "mret", 0x10500073: "wfi"}


@functools.lru_cache(maxsize=4096)
def decode(word: int) -> Insn:
    """Decode one 32-bit instruction word (cached: decoding is a pure function of the word)."""
    if word & 0x7F != 0x73:
        return Insn("other")
    funct3 = (word >> 12) & 7
    rd, rs1, csr = (word >> 7) & 31, (word >> 15) & 31, word >> 20
    if funct3 == 0:
        if word in _PRIV:
            return Insn(_PRIV[word])
        if word >> 25 == 0x09 and rd == 0:
            return Insn("sfence", rs1=rs1)
        return Insn("other")
    if funct3 == 4:
        return Insn("other")
    op = funct3 & 3
    writes = op == 1 or rs1 != 0
    return Insn("csr", rd=rd, rs1=rs1, csr=csr, op=op, immediate=funct3 >= 4, writes=writes)


@functools.cache
def _capstone() -> Any:
    import capstone

    return capstone.Cs(capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64)


def disassemble(word: int, pc: int = 0) -> str:
    """Human-readable text for one instruction word (capstone), e.g. ``csrrs a0, sstatus, zero``."""
    for insn in _capstone().disasm(word.to_bytes(4, "little"), pc):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return f".word {word:#010x}"
