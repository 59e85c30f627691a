"""The toy VMM against QEMU's riscv64 hart on vlab's RISC-V conformance suite (``rvtests.py``).

Every case is built from source with Debian's binutils, run on the VMM under shadow and under
nested paging, and compared (exit code and UART text) with the reference QEMU produced behind
``rvtests/shim.S`` (stored in ``rvtests/reference.json``; re-checked live where QEMU is installed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.toyvmm import rvtests
from vlab.toyvmm import ExitReason, Machine
from vlab.toyvmm.exits import Exit

CASES = rvtests.cases()
REFERENCE = rvtests.load_reference()
#: Differences from the real hart that remain, with the reason; strict: a fixed one must leave the list.
KNOWN_DIFFERENCES: dict[str, str] = {}


def _marks(case: rvtests.Case) -> list[pytest.MarkDecorator]:
    reason = KNOWN_DIFFERENCES.get(case.id)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in CASES])
def test_the_vmm_matches_the_reference_hart(case: rvtests.Case) -> None:
    [outcome] = rvtests.compare([case])
    failing = [name for name, ok in outcome.checks() if not ok]
    assert not failing, f"{case.id}: {failing}\nreference: {outcome.reference}\nvmm: {outcome.got}"


def test_self_checking_tests_pass_on_the_reference_hart() -> None:
    """The rv64si tests check the spec themselves: on the real hart each must pass (exit 0; only
    the differential ``misaligned`` prints anything)."""
    si = [c for c in CASES if c.suite == "rv64si"]
    assert len(si) >= 13 and all(REFERENCE[c.id].exit == 0 for c in si)
    assert [c.name for c in si if REFERENCE[c.id].uart] == ["misaligned"]


def test_every_case_has_a_reference_and_the_generated_suites_cover_each_instruction() -> None:
    assert {c.id for c in CASES} <= set(REFERENCE)
    ops = {line.split()[0] for line in REFERENCE["rv64ui-s/ui"].uart.splitlines()}
    assert {"add", "sraiw", "bgeu", "lwu", "sb", "auipc", "jal_jalr"} <= ops
    assert len(REFERENCE["rv64ua-u/ua"].uart.splitlines()) == 19  # 9 AMOs x 2 widths + LR/SC


def test_a_wrong_vmm_is_caught() -> None:
    """A CSR-write handler that drops the low bit must fail the CSR test (the suite can fail)."""
    [case] = [c for c in CASES if c.id == "rv64si/csr_basic"]
    with tempfile.TemporaryDirectory() as tmp:
        flat, _ = rvtests.build(case, Path(tmp))
    with Machine() as machine:
        default = machine.handlers[ExitReason.CSR_WRITE]

        def lossy(exit: Exit) -> None:
            default(exit)
            if exit.insn is not None and exit.insn.csr == 0x140:
                exit.vcpu.csrs[0x140] &= ~1

        machine.handlers[ExitReason.CSR_WRITE] = lossy
        guest = machine.add_guest(flat)
        machine.run(ms=100)
        assert guest.exit_code not in (None, 0)


@pytest.mark.skipif(shutil.which("qemu-system-riscv64") is None, reason="QEMU riscv64 not installed")
def test_the_stored_reference_is_what_qemu_does_today(tmp_path: Path) -> None:
    for case in CASES:
        _, elf = rvtests.build(case, tmp_path)
        assert rvtests.run_qemu(elf, tmp_path) == REFERENCE[case.id], case.id
