from __future__ import annotations

import pytest

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import Machine
from vlab.toyvmm.isa import CSR


@pytest.mark.parametrize("instruction", [
    "csrr a0, mstatus",       # machine-mode CSR: not for a (virtual) supervisor
    "csrw time, a0",          # read-only counter
    "csrr a0, hstatus",       # hypervisor CSR: there is no H extension
    "mret",                   # machine-mode return
])
def test_what_a_real_supervisor_may_not_do_traps_into_the_guest_kernel(instruction: str) -> None:
    code = kernel_program(f"{instruction}\nli t0, FAULTS\nld a0, 0(t0)\nj shutdown\n")
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exit_code == 1  # the guest kernel saw one illegal-instruction trap and skipped it
        assert guest.vcpus[0].csrs[CSR.SCAUSE] == 2


def test_csr_set_and_clear_bits_act_on_the_virtual_register_only() -> None:
    code = kernel_program("li t0, 0x222\ncsrs sie, t0\ncsrci sie, 2\ncsrr a0, sie\nj shutdown\n")
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exit_code == 0x220
        assert guest.exits == {"CSR_WRITE": 4, "CSR_READ": 1, "HYPERCALL": 1}


def test_satp_write_drops_the_shadow_table() -> None:
    code = kernel_program("li a0, 0x100000\ncall enable_paging\nli t0, 0x80001000\nld t1, 0(t0)\n"
                          "call switch_address_space\nld t1, 0(t0)\nli a0, 0\nj shutdown\n")
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exit_code == 0
        assert machine.paging_stats.shadow_flushes >= 2 and guest.exits["SHADOW_FILL"] >= 4
