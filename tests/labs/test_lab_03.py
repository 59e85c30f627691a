"""Lab 03's checks: the balloon check judges a prediction at the size the balloon really reached, models that
measure are refused, and each misconception is named (the points and the 100 % / 0 % are in test_labs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlab.grading.testing import lab_checks, locked_helpers, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "03-memory.ipynb"


# a 256 MiB guest showing 218 MiB; on a busy host the balloon stopped at 160 MiB instead of the 144 asked for
STALLED = [
    {"target_mib": 256, "balloon_mib": 256, "guest_total_mib": 218, "guest_free_mib": 200, "host_rss_mib": 300},
    {"target_mib": 200, "balloon_mib": 200, "guest_total_mib": 162, "guest_free_mib": 150, "host_rss_mib": 250},
    {"target_mib": 144, "balloon_mib": 160, "guest_total_mib": 122, "guest_free_mib": 110, "host_rss_mib": 210},
]


def test_q5_judges_the_prediction_at_the_size_the_balloon_reached() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)
    result = run_check(
        checks["prediction_matches_the_guest"],
        params,
        balloon_rows=STALLED,
        predicted_total=lambda before, configured, target: before - (configured - target),
    )
    assert result.passed, result.message


def test_q5_still_names_the_misconceptions() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)
    check = checks["prediction_matches_the_guest"]
    configured = run_check(
        check, params, balloon_rows=STALLED, predicted_total=lambda before, configured, target: target
    )
    assert not configured.passed and "never shows all of the configured memory" in configured.message
    unchanged = run_check(
        check, params, balloon_rows=STALLED, predicted_total=lambda before, configured, target: before
    )
    assert not unchanged.passed and "does shrink" in unchanged.message


def test_q2_the_formula_passes_and_a_model_that_measures_is_refused() -> None:
    """A model that runs the VMM and reads its counters would answer any (n, m): the checks call it where no
    guest may boot."""
    from vlab.labs import memory as lab

    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)

    def formula(n: int, m: int) -> int:
        return (n + 1) * (m + 1) - 1

    def measures(n: int, m: int) -> int:
        run = lab.measure_paging(lab.paging_program(16, 4, update=False, levels=n), "nested",
                                 guest_levels=n, nested_levels=m)
        return int(run.nested_refs // run.nested_walks)

    assert measures(3, 3) == formula(3, 3)  # outside the checks it measures right
    for name in ("matches_the_vmm_counters", "other_depths"):
        for model, passes in ((formula, True), (measures, False)):
            helper = locked_helpers(SOURCE, "predicted_refs", lab=lab, two_d_refs=model)["predicted_refs"]
            result = run_check(checks[name], params, predicted_refs=helper)
            assert result.passed is passes, (name, model.__name__, result.message)
            assert passes or "is a model" in result.message, result.message


def test_q4_winners_copied_from_the_printout_fail_under_other_costs() -> None:
    """The winners the notebook prints for the student's own costs are the same for everyone: the hidden check
    also asks under costs where they flip."""
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](3)

    def paging_cycles(run: dict[str, Any], exit_cycles: int, ref_cycles: int) -> int:
        if run["mode"] == "shadow":
            return int(run["shadow_fills"] * exit_cycles + run["guest_pte_reads"] * ref_cycles)
        return int(run["nested_refs"] * ref_cycles)

    def right(runs: dict[Any, Any], exit_cycles: int, ref_cycles: int) -> dict[str, str]:
        cost = {key: paging_cycles(run, exit_cycles, ref_cycles) for key, run in runs.items()}
        return {w: min(("shadow", "nested"), key=lambda m: cost[w, m]) for w, _ in runs}

    def copied(runs: dict[Any, Any], exit_cycles: int, ref_cycles: int) -> dict[str, str]:
        return {"update-heavy": "nested", "tlb-heavy": "shadow"}

    check = checks["each_mode_wins_one_workload"]
    assert run_check(check, params, winners=right, paging_cycles=paging_cycles).passed
    result = run_check(check, params, winners=copied, paging_cycles=paging_cycles)
    assert not result.passed and "cycles per exit" in result.message, result.message


def test_q6_a_model_that_runs_the_sharing_experiment_is_refused() -> None:
    from vlab.labs import memory as lab

    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)

    def measured_after_sharing(n: int, fill: int) -> int:
        return int(lab.sharing_experiment(n, fill, 1, repeats=1).frames_shared)

    def after_writes(n: int, fill: int, written: int) -> int:
        return int(lab.sharing_experiment(n, fill, written, repeats=1).frames_after_writes)

    assert measured_after_sharing(3, 8) == 8 + 2  # outside the checks, measuring gives the right figure
    helper = locked_helpers(SOURCE, "predicted_frames", lab=lab, frames_after_sharing=measured_after_sharing,
                            frames_after_writes=after_writes)["predicted_frames"]
    result = run_check(checks["predictions_match_the_vmm"], params, predicted_frames=helper)
    assert not result.passed and "are models" in result.message, result.message


def test_q1_feedback_shows_addresses_in_hex_like_the_question() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)
    result = run_check(checks["walks_your_tables"], params, walk_sv39=lambda memory, satp, va: None)
    assert not result.passed
    shown = result.message.split("(expected ", 1)[1]
    assert shown.startswith("0x") or shown.startswith("None, got 0x"), result.message
