"""Lab 07 notebook: the committed student version is current, grading gives 100 % / 0 %, and the checks
accept every correct answer (whatever the seed) while still catching wrong ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.grading.testing import lab_checks, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "07-live-migration.ipynb"
MIB = 1 << 20


@pytest.mark.parametrize("bandwidth_mib", [100, 250, 500, 1000])
def test_q2_model_and_rate_agree_for_every_seeded_bandwidth(bandwidth_mib: int) -> None:
    # at 1000 MiB/s the check's 200 MiB guest used to fit the 0.3 s budget whole: "above the critical rate"
    # then converged in round 1 and the correct answer lost the point (a quarter of all seeds, e.g. "bob-7")
    namespace, checks = lab_checks(SOURCE)
    params = dict(namespace["params_for"](1), q2_bandwidth_mib=bandwidth_mib)
    result = run_check(
        checks["your_model_agrees_with_your_rate"],
        params,
        precopy_model=namespace["reference_precopy"],
        critical_dirty_rate=lambda bw, page_size=4096: bw / page_size,
    )
    assert result.passed, result.message


def test_q2_a_rate_from_the_downtime_budget_still_fails() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = dict(namespace["params_for"](1), q2_bandwidth_mib=1000)
    result = run_check(
        checks["your_model_agrees_with_your_rate"],
        params,
        precopy_model=namespace["reference_precopy"],
        critical_dirty_rate=lambda bw, page_size=4096: bw * 0.3 / page_size,
    )
    assert not result.passed
