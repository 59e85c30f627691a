"""Counter reads Unicorn runs natively (``rdcycle``...), trapped by the VMM's code hooks (:class:`CounterTraps`).

The conformance test ``rvtests/si/counters.S`` checks the rules against QEMU's hart; these tests attack
the mechanism: code written after its page was scanned, through the same page or an alias, and guests
with far more counter reads than the VMM keeps hooks for.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest

from tests.toyvmm import rvtests
from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import ExitReason, Machine
from vlab.toyvmm.engine import CounterTraps
from vlab.toyvmm.exits import Exit

RDCYCLE_A0 = 0xC0002573  # csrrs a0, cycle, x0
_HEAD = """#include "env.h"
#include "si/paging.h"
#define RDCYCLE_A0 0xc0002573
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, trap; csrw stvec, t0
        PT_ON
        la t0, trap; csrw stvec, t0
"""
# S-mode trap handler: illegal instruction -> s4 += 1, s5 = stval, skip it; ecall from U -> jump to s3
_TRAP = """
        .align 2
trap:   csrr t6, scause; li t5, 8; beq t6, t5, 1f
        li t5, 2; bne t6, t5, fail
        addi s4, s4, 1; csrr s5, stval
        csrr t6, sepc; addi t6, t6, 4; csrw sepc, t6; sret
1:      jr s3
"""
_TO_USER = """
        csrw scounteren, zero; li s4, 0; li s5, 0
        la s3, back; la t0, {entry}; li t1, 0x40000000; add t0, t0, t1
        csrw sepc, t0; li t0, SSTATUS_SPP; csrc sstatus, t0; sret
back:
"""


@functools.cache
def _build(source: str) -> bytes:
    case = rvtests.Case("rv64si", "attack", source)
    with tempfile.TemporaryDirectory() as tmp:
        flat, _ = rvtests.build(case, Path(tmp))
    return flat


def _run(source: str, *, ms: float = 200, **options: object) -> tuple[int | None, Machine]:
    machine = Machine(**options)  # type: ignore[arg-type]
    guest = machine.add_guest(_build(source))
    machine.run(ms=ms)
    return guest.exit_code, machine


@pytest.mark.parametrize("paging", ["shadow", "nested"])
def test_user_code_that_writes_an_rdcycle_into_its_own_page_gets_the_trap(paging: str) -> None:
    """The slot ran (a nop) and its page was scanned; the U-mode code then stores an rdcycle over it
    and runs it again in the same mode (no TLB flush in between): W^X brings the page back to a fill."""
    source = _HEAD + _TO_USER.format(entry="user") + """
        TEST_CASE(2, s4, 1, nop)
        TEST_CASE(3, s5, RDCYCLE_A0, nop)
        TEST_PASSFAIL
""" + _TRAP + """
user:   call slot
        la t0, slot; li t1, RDCYCLE_A0; sw t1, 0(t0); fence.i
        call slot
        ecall
slot:   nop
        ret
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
"""
    code, machine = _run(source, paging=paging)
    machine.close()
    assert code == 0


def test_an_rdcycle_written_through_an_alias_of_the_code_page_is_trapped() -> None:
    """S-mode runs ``slot`` at its execute-only alias, writes an rdcycle into it through the RAM
    mapping (another virtual page, same frame), runs it again: virtual time, through an exit."""
    source = _HEAD + """
        li t0, 0x80000000; la s6, slot; add s6, s6, t0      # XONLY(slot)
        jalr s6
        la t0, slot; li t1, RDCYCLE_A0; sw t1, 0(t0); fence.i
        li a0, -1; jalr s6
        srli a0, a0, 32
        TEST_CASE(2, a0, 0, nop)                              # virtual time, not the host's counter
        TEST_PASSFAIL
""" + _TRAP + """
        .align 2
slot:   nop
        ret
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
"""
    code, machine = _run(source)
    assert code == 0 and machine.exit_counts()["CSR_READ"] >= 1
    machine.close()
    code, machine = _run(source, leak_host_counters=True)  # the test can fail: with the leak it does
    assert code == 5
    machine.close()


def test_the_hook_follows_scounteren_as_the_kernel_changes_it() -> None:
    """The same U-mode rdcycle (hooked once) traps or reads virtual time as scounteren.CY says now."""
    source = _HEAD + """
        li s7, 0; li s8, 6
2:      andi t0, s8, 1; csrw scounteren, t0                 # CY on every other round
        la s3, 1f; la t0, user; li t1, 0x40000000; add t0, t0, t1
        csrw sepc, t0; li t0, SSTATUS_SPP; csrc sstatus, t0; sret
1:      addi s8, s8, -1; bnez s8, 2b
        TEST_CASE(2, s4, 3, nop)                             # 3 rounds with CY = 0 trapped
        TEST_CASE(3, s7, 3, nop)                             # 3 rounds read virtual time
        TEST_PASSFAIL
""" + _TRAP + """
user:   li a0, -1; rdcycle a0; srli t0, a0, 32; bnez t0, 1f; addi s7, s7, 1
1:      ecall
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
"""
    source = source.replace("        la t0, trap; csrw stvec, t0\n        PT_ON", "        li s4, 0\n"
                            "        la t0, trap; csrw stvec, t0\n        PT_ON")
    code, machine = _run(source)
    machine.close()
    assert code == 0


def test_a_guest_with_thousands_of_counter_reads_gets_every_trap_within_bounded_hooks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three pages of rdcycle (3 x 1023) in U-mode with CY = 0, then one page aliased at 64 virtual
    pages, each entered at its last rdcycle: every read traps, and the hooks never pass the hard limit."""
    peak = [0]
    scan = CounterTraps.scan

    def watched(self: CounterTraps, page_va: int, offset: int) -> None:
        scan(self, page_va, offset)
        peak[0] = max(peak[0], len(self.sites))

    monkeypatch.setattr(CounterTraps, "scan", watched)
    flood = "        rdcycle a0\n" * 1023 + "        ret\n"  # exactly one page
    source = _HEAD + """
        PT_LINK
        la t0, alias_page; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, PTE_V | PTE_R | PTE_X | PTE_U | PTE_A
        la t1, pt_l0; li t2, 64
1:      sd t0, 0(t1); addi t1, t1, 8; addi t2, t2, -1; bnez t2, 1b
        sfence.vma
""" + _TO_USER.format(entry="user") + """
        TEST_CASE(2, s4, 3 * 1023 + 64, nop)
        TEST_CASE(3, s5, RDCYCLE_A0, nop)
        TEST_PASSFAIL
""" + _TRAP + """
user:   la t0, pages; jalr t0
        la t0, pages + 4096; jalr t0
        la t0, pages + 8192; jalr t0
        li s9, 0x40000000 + 4096 - 8; li s10, 64
1:      jalr s9; li t0, 4096; add s9, s9, t0; addi s10, s10, -1; bnez s10, 1b
        ecall
        PT_HANDLER
        .balign 4096
pages:
""" + flood * 3 + """
alias_page:
""" + flood + """
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
"""
    code, machine = _run(source, ms=2000)
    with machine:
        guest = machine.guests[0]
        assert code == 0, guest.uart.text
        assert guest.counter_traps is not None and len(guest.counter_traps.sites) <= CounterTraps.LIMIT
        assert CounterTraps.LIMIT < peak[0] <= CounterTraps.HARD_LIMIT
        assert guest.exits["ILLEGAL_INSN"] == 3 * 1023 + 64


def test_a_counter_read_with_a_source_register_is_an_attempted_write_hence_illegal() -> None:
    """``csrrs a0, cycle, a1`` writes (the spec: rs1 is not x0), even with a1 = 0: illegal in S-mode
    too, as ``time`` is. (Unicorn would run it; QEMU 7.2 traps it only when a1 != 0.)"""
    seen: list[int] = []
    with Machine() as machine:
        default = machine.handlers[ExitReason.CSR_WRITE]

        def watch(exit: Exit) -> None:
            seen.append(exit.word)
            default(exit)

        machine.handlers[ExitReason.CSR_WRITE] = watch
        guest = machine.add_guest(kernel_program("li a1, 0\nla t0, 1f\ncsrw stvec, t0\ncsrrs a0, cycle, a1\n"
                                                 "li a0, 0\nj shutdown\n.align 2\n1: csrr a0, scause\nj shutdown\n"))
        machine.run(ms=1)
        assert guest.exit_code == 2 and 0xC005A573 in seen


def test_hpm_counters_read_zero_and_follow_their_scounteren_bit() -> None:
    with Machine() as machine:
        guest = machine.add_guest(kernel_program("li a0, -1\ncsrr a0, hpmcounter17\nj shutdown\n"))
        machine.run(ms=1)
        assert guest.exit_code == 0 and guest.exits["CSR_READ"] == 1
