"""Lab 06's logic: real native runs, the toy VMM's counters for the cost model, and a real QEMU guest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.labs import overhead as lab
from vlab.measure import fit_linear


def test_params_are_reproducible_and_differ_between_seeds() -> None:
    assert lab.params_for(3) == lab.params_for(3)
    assert any(lab.params_for(3) != lab.params_for(s) for s in range(4, 10))


def test_data_disk_holds_random_bytes_and_is_removed() -> None:
    with lab.data_disk(mib=1) as path:
        data = path.read_bytes()
        assert len(data) == 1 << 20
        assert data.count(0) < len(data) // 100  # random, not a sparse file of zeros
        folder = path.parent
    assert not folder.exists()


def test_every_workload_runs_natively_with_the_host_busybox() -> None:
    with lab.data_disk(mib=lab.DATA_MIB) as disk:
        for workload in lab.WORKLOADS.values():
            sample = lab.native_sample(workload, n=2, warmup=0, disk=disk)
            assert sample.n == 2 and sample.min > 0, workload.name


def test_busybox_version_line_is_found() -> None:
    assert lab.busybox_version("BusyBox v1.35.0 (Debian 1:1.35.0-4) multi-call binary.\n") == \
        "BusyBox v1.35.0 (Debian 1:1.35.0-4)"
    assert lab.busybox_version("sh: busybox: not found") == "unknown"


# ---------------------------------------------------------------- toy VMM counters


def test_cost_workload_counters_follow_the_guest_loop() -> None:
    small = lab.run_cost_workload(lab.cost_program(4, 300), 4, 300)
    large = lab.run_cost_workload(lab.cost_program(20, 300), 20, 300)
    more = lab.run_cost_workload(lab.cost_program(4, 700), 4, 700)
    # 2 instructions per round of work, the same exits whatever the work
    assert large.instructions - small.instructions == 300 * 2 * (20 - 4)
    assert large.exits == small.exits
    # one exit per iteration, on top of the same boot and shutdown exits
    assert more.exits - small.exits == 400
    assert small.seconds > 0


def test_counters_are_deterministic() -> None:
    program = lab.cost_program(8, 200)
    first, second = lab.run_cost_workload(program), lab.run_cost_workload(program)
    assert (first.instructions, first.exits) == (second.instructions, second.exits)


def test_mmio_exits_are_counted_like_hypercalls() -> None:
    hyper = lab.run_cost_workload(lab.cost_program(4, 300, "hypercall"))
    mmio = lab.run_cost_workload(lab.cost_program(4, 300, "mmio"))
    assert mmio.exits == hyper.exits


def test_cost_program_rejects_bad_input() -> None:
    with pytest.raises(VlabError, match="exit"):
        lab.cost_program(4, 10, "teleport")
    with pytest.raises(VlabError, match="iterations"):
        lab.cost_program(4, 0)


#: a known cost model (seconds per instruction, per exit): the deterministic test synthesises each run's time from it
C_INSN, C_EXIT = 2e-8, 3e-6
#: each workload's successive runs are slowed by these factors in turn (a slow spell, a fast one): the median is 1
SPELLS = (1.0, 4.0, 0.25)


def test_cost_model_fits_the_measured_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline from the VMM's counters to the fitted model, with no wall clock in the verdict.

    Every run really executes on the toy VMM and keeps its real, deterministic counters; only its ``seconds`` is
    replaced by ``C_INSN × instructions + C_EXIT × exits``, times the next factor of :data:`SPELLS` for that
    workload. :func:`lab.measure_cost_runs` must run the workloads interleaved and keep each one's median run (the
    factor-1 one), and the fit on the kept runs must give back (C_INSN, C_EXIT): a run kept from the wrong round,
    counters swapped or mislabelled, or a wrong fit moves a coefficient by a factor of 4 or more. Cannot flake.
    Whether an exit really costs more than an instruction on this host is a timing question:
    :func:`test_an_exit_costs_more_than_an_instruction_on_this_host`.
    """
    plan = ((0, 8000), (64, 3000), (2048, 400))  # exit-heavy, mixed, instruction-heavy
    real, calls, order = lab.run_cost_workload, dict[bytes, int](), list[int]()

    def timed_by_the_model(program: bytes, work: int = 0, iterations: int = 0) -> lab.CostRun:
        run = real(program, work, iterations)
        calls[program] = calls.get(program, 0) + 1
        order.append(work)
        spell = SPELLS[(calls[program] - 1) % len(SPELLS)]
        return replace(run, seconds=spell * (C_INSN * run.instructions + C_EXIT * run.exits))

    monkeypatch.setattr(lab, "run_cost_workload", timed_by_the_model)
    runs = lab.measure_cost_runs(plan, repeats=3)
    assert [(r.work, r.iterations) for r in runs] == list(plan)
    assert order[-9:] == [work for work, _ in plan] * 3  # interleaved: a slow spell hits every workload alike
    for run, (work, iterations) in zip(runs, plan, strict=True):  # the VMM's own counters, not the caller's
        fresh = real(lab.cost_program(work, iterations))
        assert (run.instructions, run.exits) == (fresh.instructions, fresh.exits)
        assert run.exits == iterations + runs[0].exits - plan[0][1]  # one exit per iteration, same boot/shutdown
    c_insn, c_exit = fit_linear([(r.instructions, r.exits) for r in runs], [r.seconds for r in runs]).coefficients
    assert c_insn == pytest.approx(C_INSN, rel=1e-6) and c_exit == pytest.approx(C_EXIT, rel=1e-6)
    assert set(runs[0].as_dict()) == {"work", "iterations", "instructions", "exits", "seconds"}


#: sign test: interleaved pairs of runs, and how many may go the wrong way
PAIRS, WRONG_ALLOWED = 15, 7


def test_an_exit_costs_more_than_an_instruction_on_this_host() -> None:
    """An exit (decode, a Python handler, resume) costs more than an instruction Unicorn runs by itself: a sign test.

    Run A does few instructions and many exits, run B more instructions and few exits, such that (by the VMM's
    counters, asserted) B's extra instructions outnumber A's extra exits. If A takes longer than B, then
    ``c_exit·(E_A − E_B) > c_insn·(I_B − I_A) ≥ c_insn·(E_A − E_B)``, i.e. c_exit > c_insn, whatever the fixed cost
    of a run. A and B are run in PAIRS interleaved pairs; the test fails if more than WRONG_ALLOWED pairs have A no
    slower than B. On the 2-core dev machine A takes ~17 ms and B ~2 ms (median ratio 7); with three CPU-bound
    processes competing for both cores, 9 pairs of 200 went the wrong way (a stall longer than A, hitting only B).

    False-failure rate: assuming each pair goes wrong independently with probability p ≤ 0.1 (twice what the loaded
    machine showed), the test fails with probability P(Binomial(15, 0.1) ≥ 8) < 4·10⁻⁵ (< 2·10⁻⁷ at p = 0.05).
    If exits cost no more than instructions, t_A ≤ t_B: every pair goes wrong, noise aside, and the test fails.
    """
    program_a, program_b = lab.cost_program(0, 2000), lab.cost_program(1000, 25)
    a, b = lab.run_cost_workload(program_a), lab.run_cost_workload(program_b)  # also the warm-up
    assert b.instructions - a.instructions >= a.exits - b.exits > 1000
    wrong = 0
    for _ in range(PAIRS):
        a, b = lab.run_cost_workload(program_a), lab.run_cost_workload(program_b)
        wrong += a.seconds <= b.seconds
    assert wrong <= WRONG_ALLOWED, f"{wrong} of {PAIRS} pairs: the exit-heavy run was no slower"


# ---------------------------------------------------------------- a real QEMU guest


@pytest.mark.qemu
@pytest.mark.slow
def test_side_by_side_runs_the_same_busybox_on_host_and_guest() -> None:
    from vlab.qemu import VM, Disk

    with lab.data_disk(mib=lab.DATA_MIB) as disk, VM(name="lab06-test", accel="tcg",
                                                    disks=(Disk(disk, readonly=True),)) as vm:
        host, guest = lab.busybox_versions(vm)
        assert host == guest != "unknown"
        samples = lab.measure_side_by_side(vm, disk, n=2, warmup=0)
        assert set(samples) == set(lab.WORKLOADS)
        for native, in_guest in samples.values():
            assert native.n == in_guest.n == 2
        assert lab.instrument_sample(vm, n=2).n == 2


@pytest.mark.qemu
@pytest.mark.slow
def test_io_workload_without_a_disk_fails_with_a_clear_error() -> None:
    from vlab.qemu import VM

    with VM(name="lab06-nodisk", accel="tcg") as vm, pytest.raises(VlabError, match="data disk"):
        lab.guest_sample(vm, lab.WORKLOADS["io"], n=1, warmup=0)


def test_workload_commands_fill_in_the_disk() -> None:
    command = lab.WORKLOADS["io"].command_for(str(Path("/x/data.img")))
    assert "if=/x/data.img" in command
