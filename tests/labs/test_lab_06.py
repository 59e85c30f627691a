"""Lab 06's checks, whatever the seed: every correct answer passes, each misconception is named on a wrong one."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from vlab.grading.testing import lab_checks, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "06-overhead.ipynb"
NEW_RUN = {"instructions": 400_000, "exits": 1000, "seconds": 0.0125}


@pytest.mark.parametrize("predicted", [0.0125, 0.0125 * (1 + 2e-10)])
def test_q6_error_check_accepts_the_right_sign_even_when_the_model_hits_the_measurement(predicted: float) -> None:
    # a prediction within 5e-10 of the measurement made "predicted - measured" equal to its negative within the
    # sign check's 1e-9, which then failed the correct answer; the hint now runs only for a wrong answer
    namespace, checks = lab_checks(SOURCE)
    result = run_check(checks["error_of_your_prediction"], namespace["params_for"](1), new_run=NEW_RUN,
                       predict_seconds=lambda instructions, exits: predicted,
                       prediction_error=lambda: (predicted - NEW_RUN["seconds"]) / NEW_RUN["seconds"])
    assert result.passed, result.message


def test_q6_a_flipped_sign_gets_the_hint_and_no_measurement_no_point() -> None:
    namespace, checks = lab_checks(SOURCE)
    flipped = run_check(checks["error_of_your_prediction"], namespace["params_for"](1), new_run=NEW_RUN,
                        predict_seconds=lambda instructions, exits: 0.015,
                        prediction_error=lambda: (0.0125 - 0.015) / 0.0125)
    assert not flipped.passed and "the sign" in flipped.message
    unmeasured = run_check(checks["error_of_your_prediction"], namespace["params_for"](1), new_run={},
                           predict_seconds=lambda instructions, exits: 0.015, prediction_error=lambda: 0.0)
    assert not unmeasured.passed and "predict first" in unmeasured.message


def _net(side_by_side: dict[str, Any], instrument: dict[str, Any]) -> str:
    native0, guest0 = statistics.median(instrument["native"]), statistics.median(instrument["guest"])
    return max(side_by_side, key=lambda name: (statistics.median(side_by_side[name]["guest"]) - guest0)
               / (statistics.median(side_by_side[name]["native"]) - native0))


def _raw(side_by_side: dict[str, Any], instrument: dict[str, Any]) -> str:
    return max(side_by_side, key=lambda name: statistics.median(side_by_side[name]["guest"])
               / statistics.median(side_by_side[name]["native"]))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 77])
def test_q3_net_ratio_passes_and_the_raw_ratio_is_named(seed: int) -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](seed)
    assert run_check(checks["hidden_data"], params, largest_overhead=_net).passed
    raw = run_check(checks["hidden_data"], params, largest_overhead=_raw)
    assert not raw.passed and "instrument" in raw.message


def test_q1_q4_q7_wrong_letters_name_their_misconception() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](3)
    for name, choice, answer, right in (("median_and_warmup", "MEDIAN", "median_answer", 1),
                                        ("kvm_pays_for_exits", "KVM", "kvm_answer", 2),
                                        ("overhead_is_not_a_frequency", "ARTICLE", "article_answer", 1)):
        letter = namespace[choice].letter(right, params)
        assert run_check(checks[name], params, **{answer: letter}).passed
        wrong = namespace[choice].letter(0 if right else 1, params)
        result = run_check(checks[name], params, **{answer: wrong})
        assert not result.passed and result.message
