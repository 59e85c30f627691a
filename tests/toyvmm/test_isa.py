from __future__ import annotations

from vlab.toyvmm.isa import CSR, decode, disassemble


def test_decode_csr_read_and_write_forms() -> None:
    read = decode(0x10002573)  # csrr a0, sstatus  (csrrs a0, sstatus, x0)
    assert (read.kind, read.rd, read.csr, read.op, read.writes) == ("csr", 10, CSR.SSTATUS, 2, False)
    write = decode(0x18029073)  # csrw satp, t0
    assert (write.kind, write.rd, write.rs1, write.csr, write.op, write.writes) == ("csr", 0, 5, CSR.SATP, 1, True)
    imm = decode(0x10016073)  # csrsi sstatus, 2
    assert imm.immediate and imm.rs1 == 2 and imm.writes


def test_decode_privileged_system_instructions() -> None:
    assert decode(0x00000073).kind == "ecall"
    assert decode(0x10500073).kind == "wfi"
    assert decode(0x10200073).kind == "sret"
    assert decode(0x12000073).kind == "sfence"
    assert decode(0x00150513).kind == "other"  # addi


def test_disassemble_uses_capstone_names() -> None:
    assert disassemble(0x10002573) == "csrr a0, sstatus"
    assert disassemble(0x10500073) == "wfi"
