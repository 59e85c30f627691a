from __future__ import annotations

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import Machine, patch_counter_reads, x86_popf_at_cpl3
from vlab.toyvmm.nonvirt import is_counter_read

COUNTER = kernel_program("rdcycle a0\nsrli a0, a0, 20\nj shutdown\n")


def test_with_the_leak_rdcycle_does_not_trap_and_reads_the_host_clock() -> None:
    with Machine(leak_host_counters=True) as machine:
        guest = machine.add_guest(COUNTER)
        machine.run(ms=1)
        # no exit happened for rdcycle: the VMM never saw it, the guest read host ticks
        assert "CSR_READ" not in guest.exits
        assert guest.exit_code is not None and guest.exit_code << 20 > 1000 * machine.now


def test_by_default_the_vmm_catches_rdcycle_and_returns_virtual_time() -> None:
    with Machine() as machine:
        guest = machine.add_guest(COUNTER)
        machine.run(ms=1)
        assert guest.exits["CSR_READ"] == 1
        assert guest.exit_code == 0  # virtual time (a few instructions) >> 20


def test_scan_and_patch_makes_it_trap_and_return_virtual_time() -> None:
    patched, sites = patch_counter_reads(COUNTER)
    assert len(sites) == 1 and is_counter_read(int.from_bytes(COUNTER[sites[0]:sites[0] + 4], "little"))
    with Machine(leak_host_counters=True) as machine:  # the fix for the leaky VMM
        guest = machine.add_guest(patched)
        machine.run(ms=1)
        assert guest.exits["CSR_READ"] == 1
        assert guest.exit_code == 0  # virtual time (a few instructions) >> 20


def test_paravirtual_fix_asks_the_vmm_for_the_time() -> None:
    with Machine() as machine:
        guest = machine.add_guest(kernel_program("HYPERCALL HC_GET_TIME\nj shutdown\n"))
        machine.run(ms=1)
        assert guest.exit_code is not None and guest.exit_code < 100


def test_x86_popf_at_cpl3_ignores_the_interrupt_flag_without_trapping() -> None:
    result = x86_popf_at_cpl3()
    assert result.flags_loaded & 0x200 == 0  # the guest kernel asked to disable interrupts
    assert result.flags_after & 0x200        # ...but IF is still set, and nobody was told
    assert result.traps == [(13, 0x1010B)]   # the only trap: #GP on the cli that follows
