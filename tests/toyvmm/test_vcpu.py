from __future__ import annotations

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import Machine, Mode
from vlab.toyvmm.isa import CSR


def test_user_mode_ecall_is_reflected_to_the_guest_kernel_not_the_vmm() -> None:
    # enter U-mode; the user program makes syscalls (putc, exit) that the guest kernel serves
    code = kernel_program("""
        la a0, user
        j enter_user
    user:
        li a0, 'u'
        li a7, SYS_PUTC
        ecall
        li a0, 9
        li a7, SYS_EXIT
        ecall
    """)
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.uart.text == "u" and guest.exit_code == 9
        assert guest.exits["SYSCALL"] == 2 and guest.exits["SRET"] == 2


def test_privileged_instruction_in_user_mode_becomes_an_illegal_instruction_for_the_guest() -> None:
    code = kernel_program("""
        la a0, user
        j enter_user
    user:
        csrr a0, sstatus
        j user
    """)
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exits["ILLEGAL_INSN"] == 1
        assert guest.exit_code == 139  # the guest kernel killed its faulting user program
        vcpu = guest.vcpus[0]
        assert vcpu.csrs[CSR.SCAUSE] == 2 and vcpu.csrs[CSR.STVAL] == 0x10002573
        assert vcpu.mode == Mode.SUPERVISOR


def test_sret_restores_mode_and_interrupt_enable_from_spp_and_spie() -> None:
    with Machine() as machine:
        guest = machine.add_guest(kernel_program("j shutdown\n"))
        vcpu = guest.vcpus[0]
        vcpu.csrs[CSR.SSTATUS] = 1 << 1  # SIE
        vcpu.csrs[CSR.STVEC] = 0x8000_0100
        vcpu.inject_trap(8, 0, 0x8000_0040)
        assert vcpu.csrs[CSR.SSTATUS] == (1 << 5) | (1 << 8)  # SPIE=1, SPP=S, SIE=0
        assert vcpu.pc == 0x8000_0100 and vcpu.csrs[CSR.SEPC] == 0x8000_0040
        vcpu.csrs[CSR.SSTATUS] &= ~(1 << 8)  # return to user mode
        vcpu.sret()
        assert vcpu.mode == Mode.USER and vcpu.pc == 0x8000_0040
        assert vcpu.csrs[CSR.SSTATUS] & (1 << 1)  # SIE back from SPIE
