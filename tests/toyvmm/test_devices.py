from __future__ import annotations

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import RAM_BASE, Machine


def test_console_write_hypercall_copies_guest_memory_to_the_uart() -> None:
    code = kernel_program("""
        la a0, message
        li a1, 5
        HYPERCALL HC_CONSOLE_WRITE
        j shutdown
    message: .ascii "hello"
    """)
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.uart.text == "hello" and guest.exit_code == 5
        assert machine.violations == []


def test_get_time_and_set_timer_hypercalls_use_virtual_time() -> None:
    code = kernel_program("""
        HYPERCALL HC_GET_TIME
        li t0, 30000
        add a0, a0, t0
        HYPERCALL HC_SET_TIMER
        csrsi sstatus, 2
    1:  wfi
        li t0, TICKS
        ld a0, 0(t0)
        beqz a0, 1b
        HYPERCALL HC_GET_TIME
        j shutdown
    """)
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=10)
        assert guest.exit_code is not None and 30000 <= guest.exit_code < 30000 + 200


def test_unknown_hypercall_returns_minus_one() -> None:
    code = kernel_program("li a7, 99\necall\naddi a0, a0, 1\nj shutdown\n")
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exit_code == 0


def test_uart_output_is_captured_per_guest() -> None:
    with Machine() as machine:
        a, b = machine.add_guest("hello"), machine.add_guest(kernel_program("li a0, 'B'\ncall uart_putc\nj shutdown\n"))
        machine.run(ms=5)
        assert a.uart.text.startswith("hello") and b.uart.text == "B"
        assert a.memory.read(RAM_BASE, 4) is not None


def test_yield_hypercall_returns_zero_to_the_guest() -> None:
    """The result must be in a0 when the guest resumes (it used to be written after the context was saved)."""
    code = kernel_program("""
        li a0, 77
        HYPERCALL HC_YIELD
        j shutdown
    """)
    with Machine() as machine:
        guest = machine.add_guest(code)
        machine.run(ms=1)
        assert guest.exit_code == 0
