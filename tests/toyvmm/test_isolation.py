from __future__ import annotations

import pytest

from tests.toyvmm.toyvmm_fuzzing import fuzz
from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import RAM_BASE, GuestState, Machine
from vlab.toyvmm.isa import CSR

NEIGHBOUR = kernel_program("1: j 1b\n")


def test_attacker_probes_all_fault_are_recorded_and_the_neighbour_is_untouched() -> None:
    with Machine(log=True) as machine:
        attacker = machine.add_guest("attacker", name="attacker")
        neighbour = machine.add_guest("compute", name="neighbour")
        before = neighbour.memory.read(RAM_BASE, 4096)
        machine.run(ms=50)
        lines = attacker.uart.text.splitlines()
        assert lines[1] == "2222222"  # 7 probes x (read + write), every one faulted
        assert lines[2] == "ffffffffffffffff"  # the VMM refused to print beyond the guest's RAM
        assert len(machine.violations) == 15
        assert {v.guest for v in machine.violations} == {"attacker"}
        assert {v.addr for v in machine.violations} >= {0, 0x1_0000_0000, 0x8010_0000, 0xFFFF_FFFF_FFFF_F000}
        assert attacker.exits["ILLEGAL_ACCESS"] == 14 and attacker.exit_code == 0
        assert neighbour.mailbox() > 0 and neighbour.memory.read(RAM_BASE, 4096) == before
        audit = [r for r in machine.log if r.reason.name == "ILLEGAL_ACCESS"]
        assert len(audit) == 14 and audit[0].guest == "attacker"


def test_weakened_bounds_check_leaks_and_corrupts_the_neighbours_memory() -> None:
    with Machine(weak_bounds=True) as machine:
        attacker = machine.add_guest("attacker", name="attacker")
        neighbour = machine.add_guest(NEIGHBOUR, name="neighbour")
        machine.run(ms=50)
        output = attacker.uart.output
        assert output.splitlines()[1] == b"2200222"  # the probes just past RAM went through...
        assert neighbour.memory.read(RAM_BASE, 8) == bytes(8)  # ...the write probe zeroed its code
        assert bytes(8) + NEIGHBOUR[8:32] in output  # and the console hypercall printed it
        # the 4 probes that got through left no trace in the audit...
        assert sum(v.guest == "attacker" for v in machine.violations) == 14 - 4
        assert neighbour.state is GuestState.KILLED  # ...but the neighbour ran into its zeroed code


def test_kill_policy_terminates_the_attacker_only() -> None:
    with Machine(on_violation="kill") as machine:
        attacker = machine.add_guest("attacker", name="attacker")
        neighbour = machine.add_guest("compute", name="neighbour")
        machine.run(ms=30)
        assert attacker.state is GuestState.KILLED and len(machine.violations) == 1
        assert "killed: isolation violation" in attacker.uart.text
        assert neighbour.state is GuestState.RUNNING and neighbour.mailbox() > 0


def test_fuzz_ten_thousand_random_streams_never_escape() -> None:
    report = fuzz(10_000, seed=2024)
    assert report["streams"] >= 10_000 and report["audited_fills"] > 10_000
    assert report["violations"] > 0  # the fuzzer really did probe outside


def test_the_fuzzer_catches_a_weakened_vmm() -> None:
    with pytest.raises(AssertionError, match="another guest's frame"):
        fuzz(600, seed=2024, weak_bounds=True)


def test_the_vmms_private_sink_page_is_out_of_every_guests_reach() -> None:
    """2^63 is not canonical in Sv39/Sv48 and beyond any RAM with paging off: touching it is an
    isolation violation like any address outside the guest (an access fault), never a read of the
    VMM's sink code."""
    code = kernel_program("li t0, 1\nslli t0, t0, 63\nld a0, 0(t0)\nli t0, FAULTS\nld a0, 0(t0)\nj shutdown\n")
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exit_code == 1 and guest.vcpus[0].csrs[CSR.SCAUSE] == 5  # one load access fault
        assert [(v.guest, v.addr, v.access) for v in machine.violations] == [(guest.name, 1 << 63, "read")]
