"""Lab 06's logic: real native runs, the toy VMM's counters for the cost model, and a real QEMU guest."""

from __future__ import annotations

import math
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


def test_cost_model_fits_the_measured_runs() -> None:
    plan = ((0, 8000), (64, 3000), (2048, 400))  # exit-heavy, mixed, instruction-heavy
    runs = lab.measure_cost_runs(plan, repeats=3)
    assert [(r.work, r.iterations) for r in runs] == list(plan)
    c_insn, c_exit = fit_linear([(r.instructions, r.exits) for r in runs], [r.seconds for r in runs]).coefficients
    # an exit (decode, Python handler, resume) costs more than an instruction Unicorn runs by itself
    assert math.isfinite(c_insn) and math.isfinite(c_exit)
    assert c_exit > c_insn > 0
    assert set(runs[0].as_dict()) == {"work", "iterations", "instructions", "exits", "seconds"}


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
