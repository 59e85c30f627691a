from __future__ import annotations

import statistics

import pytest

from vlab.toyvmm import VCPU, Credit, Lottery, Machine, RoundRobin, Scheduler, ms


def shares_of(scheduler: Scheduler | str, weights: list[int], caps: list[int] | None = None,
              run_ms: float = 900) -> tuple[dict[str, float], Machine]:
    machine = Machine(scheduler=scheduler)
    for i, weight in enumerate(weights):
        machine.add_guest("compute", name=f"g{i}", weight=weight, cap=(caps or [0] * len(weights))[i])
    trace = machine.run(ms=run_ms)
    return trace.shares(), machine


def test_round_robin_gives_equal_shares_in_fixed_slices() -> None:
    shares, machine = shares_of(RoundRobin(slice_ms=10), [256, 512, 256], run_ms=300)
    assert all(abs(s - 1 / 3) < 0.01 for s in shares.values())
    assert {s.end - s.start for s in machine.trace} == {ms(10)}
    machine.close()


def test_credit_shares_follow_weights() -> None:
    shares, machine = shares_of(Credit(), [256, 512, 256])
    assert shares["g1"] == pytest.approx(0.5, abs=0.04)
    assert shares["g0"] == pytest.approx(0.25, abs=0.04) and shares["g2"] == pytest.approx(0.25, abs=0.04)
    machine.close()


def test_credit_cap_is_respected_even_when_the_cpu_would_idle() -> None:
    shares, machine = shares_of(Credit(), [256, 256], caps=[20, 0], run_ms=600)
    assert shares["g0"] <= 0.20 + 0.005
    machine.close()
    _, machine = shares_of(Credit(), [256], caps=[20], run_ms=300)
    busy = sum(s.end - s.start for s in machine.trace if s.guest != "idle")
    assert busy / machine.now == pytest.approx(0.20, abs=0.01)  # not work-conserving: idles 80 %
    machine.close()


def wake_latency(scheduler: Scheduler) -> float:
    with Machine(scheduler=scheduler) as machine:
        sleeper = machine.add_guest("sleeper", name="sleeper")
        machine.add_guest("compute", name="c1")
        machine.add_guest("compute", name="c2")
        machine.run(ms=600)
        latencies = sleeper.vcpus[0].wake_latencies
        assert len(latencies) > 5
        return statistics.mean(latencies)


def test_credit_boost_lowers_wake_latency_compared_to_round_robin() -> None:
    boosted = wake_latency(Credit())
    plain = wake_latency(RoundRobin(slice_ms=30))
    assert boosted < plain / 10  # BOOST preempts at the wake-up; round-robin waits up to 2 slices


def test_lottery_is_proportional_and_reproducible_from_its_seed() -> None:
    shares, machine = shares_of(Lottery(slice_ms=5, seed=7), [100, 300], run_ms=1500)
    assert shares["g1"] == pytest.approx(0.75, abs=0.07)
    first = list(machine.trace)
    machine.close()
    _, again = shares_of(Lottery(slice_ms=5, seed=7), [100, 300], run_ms=1500)
    _, other = shares_of(Lottery(slice_ms=5, seed=8), [100, 300], run_ms=1500)
    assert list(again.trace) == first and list(other.trace) != first
    again.close()
    other.close()


def test_same_configuration_gives_the_same_trace_and_exit_counts() -> None:
    def one_run() -> tuple[list[object], list[dict[str, int]]]:
        with Machine(scheduler=Credit()) as machine:
            for program in ("sleeper", "compute", "hypercalls", "memdirty"):
                machine.add_guest(program, weight=256 + 128 * len(machine.guests))
            machine.run(ms=200)
            return list(machine.trace), [g.exits for g in machine.guests]

    assert one_run() == one_run()


def test_a_student_scheduler_plugs_in() -> None:
    class LastOnly(Scheduler):
        name = "last-only"

        def pick(self, now: int) -> tuple[VCPU, int] | None:
            runnable = [v for v in self.vcpus if v.runnable]
            return (runnable[-1], ms(5)) if runnable else None

    shares, machine = shares_of(LastOnly(), [256, 256, 256], run_ms=50)
    assert shares == {"g2": 1.0}
    machine.close()
