"""Lab 07's checks, whatever the seed: every correct answer passes, each misconception is named on a wrong one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vlab.grading.testing import lab_checks, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "07-live-migration.ipynb"
MIB = 1 << 20


def _rate(bandwidth: float, page_size: int = 4096) -> float:
    return bandwidth / page_size


@pytest.mark.parametrize("seed", [1, 2, 3, 99, 12345])
def test_reference_answers_pass_q1_q2_q5_for_every_seed(seed: int) -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](seed)
    answers: dict[str, Any] = {"precopy_model": namespace["reference_precopy"], "critical_dirty_rate": _rate,
                               "forced_downtime": namespace["reference_forced"]}
    for name in ("rounds_on_your_hidden_knobs", "working_set_cap_and_round_limit", "critical_rate_for_your_link",
                 "your_model_agrees_with_your_rate", "clarks_case", "forced_downtime_on_hidden_guests"):
        result = run_check(checks[name], params, **answers)
        assert result.passed, (name, result.message)


def test_a_rate_in_bytes_or_from_the_budget_is_named() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](5)
    for wrong, words in ((lambda bw, page_size=4096: bw, "bytes per second"),
                         (lambda bw, page_size=4096: bw * 0.3 / page_size, "downtime budget")):
        result = run_check(checks["critical_rate_for_your_link"], params, critical_dirty_rate=wrong)
        assert not result.passed and words in result.message


def test_a_model_that_counts_stop_and_copy_as_a_round_is_named() -> None:
    namespace, checks = lab_checks(SOURCE)
    reference = namespace["reference_precopy"]

    def one_too_many(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result = dict(reference(*args, **kwargs))
        if result["converged"]:
            result["rounds"] += 1
        return result

    result = run_check(checks["working_set_cap_and_round_limit"], namespace["params_for"](1),
                       precopy_model=one_too_many)
    assert not result.passed and "one round too many" in result.message


def test_q3_compares_the_model_with_the_measured_runs() -> None:
    namespace, checks = lab_checks(SOURCE)
    reference = namespace["reference_precopy"]
    idle = {"label": "idle", "wws_mib": 24, "bandwidth": 128 * MIB, "dirty_rate": 0, "downtime_limit_ms": 300,
            "completed": True, "transferred_bytes": 96 * MIB}
    iterating = dict(idle, label="iterating", bandwidth=64 * MIB, dirty_rate=9000, downtime_limit_ms=30,
                     transferred_bytes=int(reference(96 * MIB, 64 * MIB, 9000, 24 * 256, 0.03)["transferred"]))
    hot = dict(idle, label="hot", wws_mib=40, bandwidth=64 * MIB, dirty_rate=35000, downtime_limit_ms=50,
               completed=False, transferred_bytes=150 * MIB)
    params = namespace["params_for"](1)
    runs = [idle, iterating, hot]
    for name in ("verdict_on_every_run", "bytes_of_the_completed_runs"):
        assert run_check(checks[name], params, precopy_model=reference, ram_bytes=96 * MIB, runs_summary=runs).passed
        missing = run_check(checks[name], params, precopy_model=reference, ram_bytes=96 * MIB,
                            runs_summary=[idle, hot])
        assert not missing.passed and "not measured" in missing.message
    # a model that never re-sends dirtied pages converges everywhere: the hot run contradicts it
    naive = run_check(checks["verdict_on_every_run"], params, precopy_model=lambda *a, **k: dict(
        reference(*a, **k), converged=True), ram_bytes=96 * MIB, runs_summary=runs)
    assert not naive.passed and "'hot'" in naive.message
