"""Lab 02 logic: real RISC-V guests on the toy VMM, real x86 fragments in Unicorn at CPL0 and CPL3."""

from __future__ import annotations

import pytest

from vlab.errors import VlabError
from vlab.labs import trap_emulate as lab
from vlab.toyvmm.devices import handle_hypercall
from vlab.toyvmm.exits import Exit, ExitReason
from vlab.toyvmm.handlers import mmio_write
from vlab.toyvmm.machine import Machine

PRIVILEGED = {"hlt", "cli", "sti", "lgdt [eax]", "lidt [eax]", "mov cr3, eax", "mov eax, cr0", "wrmsr",
              "rdmsr", "lmsw ax", "clts", "invlpg [eax]", "ltr ax", "lldt ax", "wbinvd"}


# ---------------------------------------------------------------- x86


def test_privileged_x86_instructions_raise_gp_at_cpl3() -> None:
    for name in PRIVILEGED:
        assert lab.x86_trap_vector(lab.X86_INSTRUCTIONS[name]) == 13, name
    assert lab.x86_trap_vector(lab.X86_INSTRUCTIONS["nop"]) is None  # not "everything traps"


def test_every_other_pool_instruction_runs_at_cpl3_without_trapping() -> None:
    for name in set(lab.X86_INSTRUCTIONS) - PRIVILEGED:
        assert lab.x86_trap_vector(lab.X86_INSTRUCTIONS[name]) is None, name
    assert lab.x86_trap_vector(lab.X86_INSTRUCTIONS["hlt"]) == 13  # not "nothing traps"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 12345])
def test_fragment_diverges_under_the_vmm_at_a_pushfd_or_popfd(seed: int) -> None:
    code = lab.x86_fragment(seed)
    native, virtualized = lab.run_x86(code, "native"), lab.run_x86(code, "vmm")
    assert [s.address for s in native.steps] == [s.address for s in virtualized.steps]
    assert native.traps == 0 and virtualized.traps >= 2  # cli and sti trap under the VMM
    first = next(a for a, b in zip(native.steps, virtualized.steps, strict=True) if a.state != b.state)
    assert first.text in ("pushfd", "popfd")
    assert native.final != virtualized.final


@pytest.mark.parametrize("seed", [0, 7, 99])
def test_paravirtual_fragment_is_equivalent_to_native(seed: int) -> None:
    native = lab.run_x86(lab.x86_fragment(seed), "native")
    paravirt = lab.run_x86(lab.x86_fragment(seed, "paravirt"), "vmm")
    assert paravirt.final == native.final and native.final  # a run that records nothing is not equivalent
    assert paravirt.traps >= 3  # at least cli, sti and the probe's pushfd hypercall go through the VMM
    assert lab.run_x86(lab.x86_fragment(seed), "vmm").final != native.final  # what the port repairs


def _patch(code: bytes) -> bytes:
    patched = bytearray(code)
    instructions = lab.disassemble_x86(code)
    for address, _size, text in instructions:
        if text in ("pushfd", "popfd"):
            patched[address - instructions[0][0]] = 0xCC
    return bytes(patched)


@pytest.mark.parametrize("seed", [0, 5, 42])
def test_int3_patched_fragment_is_equivalent_to_native(seed: int) -> None:
    code = lab.x86_fragment(seed)
    repaired = lab.run_x86(_patch(code), "vmm", original=code)
    native = lab.run_x86(code, "native")
    assert [s.state for s in repaired.steps] == [s.state for s in native.steps]
    assert len(native.steps) == len(lab.disassemble_x86(code))  # every instruction ran and was recorded
    patched = sum(text in ("pushfd", "popfd") for _a, _s, text in lab.disassemble_x86(code))
    assert sum("(patched)" in s.text for s in repaired.steps) == patched > 0  # each int3 emulated its original
    assert lab.run_x86(code, "vmm").final != native.final  # what the patch repairs


def test_fragments_hide_pushfd_popfd_bytes_inside_immediates() -> None:
    hidden = 0
    for seed in range(10):
        code = lab.x86_fragment(seed)
        real = sum(text in ("pushfd", "popfd") for _a, _s, text in lab.disassemble_x86(code))
        hidden += code.count(0x9C) + code.count(0x9D) - real
    assert hidden > 0  # a byte-replacing patcher must fail on some fragments
    assert len({lab.x86_fragment(seed) for seed in range(10)}) == 10  # each seed its own fragment
    assert lab.x86_fragment(4) == lab.x86_fragment(4)


def test_int3_over_another_instruction_is_refused() -> None:
    code = bytes.fromhex("90") + bytes.fromhex("9c")
    with pytest.raises(VlabError, match="neither pushfd nor popfd"):
        lab.run_x86(b"\xcc\x9c", "vmm", original=code)
    over_pushfd = lab.run_x86(b"\xcc\x9c", "vmm", original=bytes.fromhex("9c9c"))  # the same int3, allowed
    assert [s.text for s in over_pushfd.steps] == ["pushfd (patched)", "pushfd"]


def test_bad_mode_and_flavour_are_vlab_errors() -> None:
    with pytest.raises(VlabError):
        lab.run_x86(b"\x90", "kvm")
    with pytest.raises(VlabError):
        lab.x86_fragment(1, "fast")
    assert [s.text for s in lab.run_x86(b"\x90", "native").steps] == ["nop"]  # the good ones are accepted
    assert lab.x86_fragment(1, "paravirt") != lab.x86_fragment(1, "plain")


def test_trace_table_lists_every_instruction() -> None:
    code = lab.x86_fragment(3)
    native, virtualized = lab.run_x86(code, "native"), lab.run_x86(code, "vmm")
    table = lab.trace_table(native, virtualized)
    lines = table.splitlines()
    assert len(lines) == len(native.steps) + 1
    for line, step in zip(lines[1:], native.steps, strict=True):
        assert f"{step.address:#x}" in line and step.text in line and f"{step.state['eax']:x}" in line
    assert sum(line.endswith("yes") for line in lines) == virtualized.traps > 0


# ---------------------------------------------------------------- RISC-V on the toy VMM


def test_hello_boots_on_the_vmms_own_handlers() -> None:
    run = lab.run_guest("hello", ms=10)
    assert run.output.startswith("hello from toyvmm guest")
    assert run.state == "halted" and run.exit_code == 0
    assert run.exits["MMIO_WRITE"] == run.exits["MMIO_READ"] == len(run.output)


def test_a_replaced_handler_receives_the_guests_exits() -> None:
    seen: list[int] = []

    def counting_uart(exit: Exit) -> None:
        seen.append(exit.value)
        mmio_write(exit)

    vmm = Machine()  # an instructor's handler may wrap the default: only run_guest's (the student's) are withheld
    vmm.handlers[ExitReason.MMIO_WRITE] = counting_uart
    try:
        run = lab.run_guest("hello", ms=10, machine=vmm)
    finally:
        vmm.close()
    assert bytes(seen).decode() == run.output
    assert run.output.startswith("hello from toyvmm guest")  # the guest did run, on that machine


def test_unknown_exit_reason_is_a_vlab_error() -> None:
    with pytest.raises(VlabError, match="unknown exit reason"):
        lab.run_guest("hello", {"NOT_A_REASON": mmio_write})
    # a known reason, by name in any case, is accepted (the guest's shutdown stays the default's)
    assert lab.run_guest("hello", {"hypercall": handle_hypercall}, ms=10).state == "halted"


def test_csr_test_program_reads_back_old_values_and_warl_masked_sstatus() -> None:
    values = [0x1234_5678_9ABC, 0xFFFF_0000_1111, 0x7, 0xFFFF_FFFF_FFFF]
    run = lab.run_guest(lab.csr_test_program(values, 5))
    assert run.state == "halted"
    assert run.mailbox[0] == 0 and run.mailbox[1] == values[0]  # csrrw gives the old value
    assert run.mailbox[13] != values[3] and run.mailbox[13] == run.mailbox[13] & values[3]  # sstatus masked


def test_printing_costs_two_exits_per_byte_via_uart_and_one_via_hypercall() -> None:
    message = "popek & goldberg"

    def exits(text: str, how: str) -> int:
        return sum(lab.run_guest(lab.print_program(text, how)).exits.values())

    assert exits(message, "uart") - exits("", "uart") == 2 * len(message)
    assert exits(message, "hypercall") - exits("", "hypercall") == 1
    assert lab.run_guest(lab.print_program(message, "hypercall")).output == message


def test_console_hypercall_refuses_a_buffer_outside_guest_ram() -> None:
    run = lab.run_guest(lab.console_test_program("abc", "!"))
    assert run.output == "abc!"
    assert run.mailbox[:2] == [3, 2**64 - 1]


def test_params_are_deterministic_and_seed_dependent() -> None:
    assert lab.params_for(7) == lab.params_for(7)
    assert lab.params_for(7) != lab.params_for(8)
    assert set(lab.params_for(7)["classify"]) <= set(lab.X86_INSTRUCTIONS)


def test_trap_cost_measures_both_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real loops run and give positive times; then, with the loops' (seconds, iterations) fixed, the
    arithmetic is checked exactly (no clock in that verdict, and a function returning made-up samples fails)."""
    cost = lab.measure_trap_cost(repeats=2, plain_ms=50, trapping_ms=2)
    assert cost.ns_per_instruction.n == cost.ns_per_iteration_trapping.n == 2
    assert cost.ns_per_instruction.median > 0 and cost.ns_per_iteration_trapping.median > 0
    assert cost.ns_per_iteration_plain.median == pytest.approx(6 * cost.ns_per_instruction.median)

    loops = {"compute": (0.6, 10**7), "hypercalls": (0.5, 10**5)}  # 60 ns / plain iteration, 5000 ns / trapping
    asked: list[tuple[str, float]] = []

    def timed(program: str, virtual_ms: float) -> tuple[float, int]:
        asked.append((program, virtual_ms))
        return loops[program]

    monkeypatch.setattr(lab, "_time_loop", timed)
    cost = lab.measure_trap_cost(repeats=2, plain_ms=50, trapping_ms=2)
    assert asked == [("compute", 50), ("hypercalls", 2)] * 2
    assert cost.ns_per_instruction.median == pytest.approx(10)
    assert cost.ns_per_iteration_trapping.median == pytest.approx(5000)
    assert cost.ns_per_trap == pytest.approx(4940) and cost.ratio == pytest.approx(494)
