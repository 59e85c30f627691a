from __future__ import annotations

import pytest

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.errors import VlabError
from vlab.toyvmm import Exit, ExitReason, Machine
from vlab.toyvmm.handlers import csr_access
from vlab.toyvmm.isa import CSR

READ_SSCRATCH = kernel_program("csrr a0, sscratch\nj shutdown\n")


def test_replacing_one_handler_changes_what_the_guest_sees() -> None:
    seen: list[Exit] = []

    def lying_csr_read(exit: Exit) -> None:
        seen.append(exit)
        assert exit.insn is not None
        if exit.insn.csr == CSR.SSCRATCH:
            exit.vcpu.write_reg(exit.insn.rd, 42)
        else:
            csr_access(exit)

    with Machine() as machine:
        previous = machine.handlers.register(ExitReason.CSR_READ, lying_csr_read)
        assert previous is csr_access
        guest = machine.add_guest(READ_SSCRATCH)
        machine.run(ms=1)
        assert guest.exit_code == 42  # the guest kernel returned what our handler made up
        assert [e.reason for e in seen] == [ExitReason.CSR_READ]
        assert seen[0].pc >= 0x8000_0000 and seen[0].word == 0x14002573  # csrr a0, sscratch


def test_reset_restores_the_default_handler() -> None:
    with Machine() as machine:
        machine.handlers[ExitReason.CSR_READ] = lambda exit: exit.vcpu.write_reg(exit.insn.rd, 1)  # type: ignore[union-attr]
        machine.handlers.reset(ExitReason.CSR_READ)
        guest = machine.add_guest(READ_SSCRATCH)
        machine.run(ms=1)
        assert guest.exit_code == 0x8000_E000  # the real virtual sscratch: hart 0's save area


def test_handlers_are_keyed_by_exit_reason_only() -> None:
    with Machine() as machine, pytest.raises(VlabError, match="keyed by ExitReason"):
        machine.handlers["CSR_READ"] = csr_access  # type: ignore[index]


def test_every_exit_is_counted_and_logged_with_its_instruction() -> None:
    with Machine(log=True) as machine:
        guest = machine.add_guest(READ_SSCRATCH)
        machine.run(ms=1)
        assert guest.exits == {"CSR_WRITE": 2, "CSR_READ": 1, "HYPERCALL": 1}
        assert machine.exit_counts() == guest.exits
        texts = [(r.reason, r.text) for r in machine.log]
        assert texts[:3] == [(ExitReason.CSR_WRITE, "csrw stvec, t0"), (ExitReason.CSR_WRITE, "csrw sscratch, t0"),
                             (ExitReason.CSR_READ, "csrr a0, sscratch")]
        assert "CSR_READ" in str(machine.log[2]) and machine.log[2].guest == guest.name


def test_logging_off_keeps_no_log() -> None:
    with Machine() as machine:
        machine.add_guest(READ_SSCRATCH)
        machine.run(ms=1)
        assert machine.log == []


@pytest.mark.parametrize(("reason", "program"), [
    (ExitReason.CSR_READ, READ_SSCRATCH),       # from the interrupt hook
    (ExitReason.MMIO_WRITE, "hello"),           # from the MMIO callback
    (ExitReason.SHADOW_FILL, "memdirty"),       # from the TLB-fill hook
])
def test_a_failing_handler_surfaces_with_a_note_naming_it(reason: ExitReason, program: bytes | str) -> None:
    """Each hook is called from C through ctypes, which would swallow the exception: it must reach run()."""
    def broken(exit: Exit) -> None:
        raise ZeroDivisionError("student bug")

    with Machine() as machine:
        machine.handlers[reason] = broken
        guest = machine.add_guest(program)
        with pytest.raises(ZeroDivisionError) as info:
            machine.run(ms=1)
        assert any(f"{reason.name} exit handler" in note for note in info.value.__notes__)
        assert guest.exit_counts[reason] == 1  # the first failure stopped the guest at once


def test_handlers_installed_with_update_are_the_ones_the_trap_path_calls() -> None:
    seen: list[int] = []
    with Machine() as machine:
        machine.handlers.update({ExitReason.CSR_READ: lambda exit: seen.append(exit.pc)})
        machine.add_guest(READ_SSCRATCH)
        machine.run(ms=1)
        assert len(seen) == 1
        with pytest.raises(VlabError, match="keyed by ExitReason"):
            machine.handlers.update(CSR_READ=csr_access)
