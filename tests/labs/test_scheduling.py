"""Lab 04's logic: placement models on seeded VM lists, the article's example, and a real cgroup quota."""

from __future__ import annotations

from typing import cast

import pytest

from vlab.errors import VlabError
from vlab.labs import scheduling as lab

CAP = lab.HOST_CAPACITY


# ---------------------------------------------------------------- vCPUs on the toy VMM


def test_params_are_reproducible() -> None:
    assert lab.params_for(11) == lab.params_for(11)
    assert lab.params_for(11) != lab.params_for(12)


def test_a_mix_runs_deterministically() -> None:
    mix = lab.seeded_mix(5)
    first, second = lab.run_mix(mix, "credit", 40), lab.run_mix(mix, "credit", 40)
    assert first.slices == second.slices
    assert first.busy_ms == second.busy_ms


def test_credit_boosts_the_sleeper_where_round_robin_makes_it_wait() -> None:
    mix = lab.seeded_mix(2)
    rr, credit = lab.run_mix(mix, "round-robin", 100), lab.run_mix(mix, "credit", 100)
    # round-robin: the woken guest waits for every other guest's 10 ms slice
    assert rr.max_latency_ms >= 10
    assert credit.max_latency_ms < 1
    assert len(credit.wake_latency_ms["web"]) > len(rr.wake_latency_ms["web"])


def test_credit_shares_follow_weights_for_cpu_bound_guests() -> None:
    mix = [lab.GuestSpec("a", "compute", 256), lab.GuestSpec("b", "compute", 512)]
    result = lab.run_mix(mix, "credit", 900)  # whole rounds of the a, b, b pattern of 30 ms periods
    assert result.shares["b"] == pytest.approx(2 * result.shares["a"], rel=0.02)
    assert result.fairness == pytest.approx(1.0, abs=1e-3)


def test_round_robin_ignores_caps_and_credit_enforces_them() -> None:
    mix = [lab.GuestSpec("a", "compute"), lab.GuestSpec("n", "hypercalls", cap=10)]
    assert lab.run_mix(mix, "round-robin", 60).shares["n"] > 0.3
    assert lab.run_mix(mix, "credit", 60).shares["n"] <= 0.11


def test_entitlement_resplits_what_a_capped_guest_cannot_use() -> None:
    mix = [lab.GuestSpec("a", "compute", 256), lab.GuestSpec("b", "compute", 512),
           lab.GuestSpec("n", "hypercalls", 256, cap=10)]
    entitled = lab.run_mix(mix, "round-robin", 30).entitled()
    assert entitled["n"] == pytest.approx(0.10)
    assert entitled["b"] == pytest.approx(2 * entitled["a"])
    assert sum(entitled.values()) == pytest.approx(1.0)


def test_slices_are_plot_ready_and_cover_the_run() -> None:
    result = lab.run_mix(lab.seeded_mix(1), "round-robin", 50)
    assert result.slices[0].start == 0
    assert sum(s.end - s.start for s in result.slices) == pytest.approx(result.duration_ms)
    assert {s.lane for s in result.slices if s.guest == "db"} == {"db/0"}
    assert "Jain" in result.table()


def test_score_scheduler_returns_plain_data_for_the_grader() -> None:
    from vlab.toyvmm import RoundRobin

    mix: list[dict[str, object]] = [{"name": "a", "program": "compute"}, {"name": "w", "program": "sleeper"}]
    score = lab.score_scheduler(RoundRobin, mix, duration_ms=30)
    assert set(score) == {"fairness", "max_latency_ms", "shares", "classes"}
    assert "RoundRobin" in cast(list[str], score["classes"])
    with pytest.raises(VlabError, match="Scheduler"):
        lab.score_scheduler(lambda: "not a scheduler", mix)  # type: ignore[arg-type,return-value]


def test_yielding_on_spin_removes_lock_holder_preemption_waste() -> None:
    spinning = lab.lock_holder_preemption(yield_after=0, duration_ms=60)
    yielding = lab.lock_holder_preemption(yield_after=20, duration_ms=60)
    assert spinning.spins > 50 * yielding.spins
    assert spinning.useful_fraction < 0.9 < yielding.useful_fraction
    assert yielding.sections > spinning.sections


# ---------------------------------------------------------------- placement


def test_seeded_vms_are_reproducible_and_differ_between_seeds() -> None:
    assert lab.seeded_vms(7) == lab.seeded_vms(7)
    assert lab.seeded_vms(7) != lab.seeded_vms(8)
    assert all(vm.demand.fits_in(CAP) for seed in range(20) for vm in lab.seeded_vms(seed))


def test_seeded_vms_mix_profiles_so_every_dimension_matters() -> None:
    kinds = {vm.name.split("-")[1] for seed in range(5) for vm in lab.seeded_vms(seed)}
    assert kinds == {"cpu", "mem", "disk", "balanced"}


def test_article_example_done_right_leaves_two_cpus() -> None:
    steps = lab.replay_article_example()
    assert [s.resource for s in steps] == ["disk", "mem", "cpu"]
    assert steps[-1].free_after == lab.Demand(2, 4, 100)  # the article prints C = 4


def test_resource_order_does_not_change_a_single_vms_result() -> None:
    host, need = lab.Demand(16, 64, 500), lab.Demand(3, 10, 120)
    finals = {lab.replay_article_example(host, need, order)[-1].free_after
              for order in (("cpu", "mem", "disk"), ("disk", "mem", "cpu"), ("mem", "cpu", "disk"))}
    assert finals == {lab.Demand(13, 54, 380)}


def test_replay_rejects_a_non_permutation_order() -> None:
    with pytest.raises(VlabError, match="order"):
        lab.replay_article_example(order=("cpu", "cpu", "disk"))


def test_article_objective_prefers_the_wasteful_load() -> None:
    (_, wasteful_obj, wasteful_util), (_, balanced_obj, balanced_util) = lab.objective_counterexample()
    assert wasteful_obj < balanced_obj  # the article's objective calls the wasteful one better
    assert wasteful_util < balanced_util  # while it uses far less of the host


def test_article_greedy_places_every_vm_validly() -> None:
    for seed in range(10):
        vms = lab.seeded_vms(seed)
        assignment = lab.article_greedy(vms, CAP)
        assert lab.placement_problems(vms, CAP, assignment) == []
        lower = max(-(-x // 1) for x in lab.lower_bound_hint(vms, CAP))
        assert lab.hosts_used(assignment) >= lower


def test_placement_problems_names_the_overcommitted_host() -> None:
    vms = [lab.VMSpec("a", lab.Demand(20, 10, 10)), lab.VMSpec("b", lab.Demand(20, 10, 10))]
    assert lab.placement_problems(vms, CAP, [0, 1]) == []
    problems = lab.placement_problems(vms, CAP, [0, 0])
    assert len(problems) == 1 and "host 0 is overcommitted" in problems[0]
    assert "entries" in lab.placement_problems(vms, CAP, [0])[0]
    assert "not an integer" in lab.placement_problems(vms, CAP, [0, -1])[0]


def test_placement_table_shows_each_hosts_fill() -> None:
    vms = [lab.VMSpec("a", lab.Demand(16, 64, 1000))]
    table = lab.placement_table(vms, CAP, [0])
    assert "50%" in table.splitlines()[1]


# ---------------------------------------------------------------- a real guest under a CPU quota


@pytest.mark.qemu
@pytest.mark.slow
def test_cpu_quota_on_vcpu_threads_slows_the_guest_loop() -> None:
    """The quota caps the vCPU thread's CPU rate. The loop is slower throttled than free only when the free run got
    more CPU than the quota allows: on a host starved by other work the free run may get less (it happened)."""
    ok, why = lab.cpu_quota_support()
    if not ok:
        pytest.skip(why)
    from vlab.qemu import VM

    def timed(vm: VM) -> tuple[lab.LoopRate, float]:
        before = vm.host_sample()
        rate = lab.guest_loop_rate(vm, 5000)
        after = vm.host_sample()
        return rate, (sum(after.vcpu_seconds.values()) - sum(before.vcpu_seconds.values())) / (after.time - before.time)

    with VM(accel="tcg", name="lab04-test") as vm:
        threads = lab.vcpu_threads(vm)
        assert {cpu.thread_id for cpu in vm.vcpus()} <= set(threads)
        lab.guest_loop_rate(vm, 3000)  # warm-up: the first run translates the loop
        free, free_cpu = timed(vm)
        with lab.throttled_vcpus(vm, 0.1) as group:
            slow, slow_cpu = timed(vm)
            throttled = group.throttled_periods()
            path = group.dirs["cpu"][1]
        assert not path.exists()  # the child group is gone, so the threads are back in their own
        again, again_cpu = timed(vm)
    assert throttled > 0
    # the quota caps the vCPU thread's CPU rate (a busy host can only lower it further)
    assert slow_cpu < 0.1 * 1.5
    if free_cpu > 0.1 * 2:
        assert slow.per_second < free.per_second
    if again_cpu > 0.1 * 2:
        assert again.per_second > slow.per_second


def test_throttle_rejects_a_quota_above_one_cpu() -> None:
    with pytest.raises(VlabError, match="fraction"), lab.throttled_vcpus(None, 1.5):  # type: ignore[arg-type]
        pass
