"""Lab 06 notebook: the committed student version is current, grading gives 100 % / 0 %, and the
prediction-error check names the sign misconception only for a wrong answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.grading.testing import lab_checks, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "06-overhead.ipynb"


@pytest.mark.parametrize("predicted", [0.0125, 0.0125 * (1 + 2e-10)])
def test_q6_error_check_accepts_the_right_sign_even_when_the_model_hits_the_measurement(predicted: float) -> None:
    # a prediction within 5e-10 of the measurement made "predicted - measured" equal to its negative within the
    # sign check's 1e-9, which then failed the correct answer; the hint now runs only for a wrong answer
    namespace, checks = lab_checks(SOURCE)
    new_run = {"instructions": 400_000, "exits": 1000, "seconds": 0.0125}
    result = run_check(
        checks["error_is_relative_to_the_measurement"],
        namespace["params_for"](1),
        new_run=new_run,
        predict_seconds=lambda instructions, exits: predicted,
        prediction_error=lambda: (predicted - new_run["seconds"]) / new_run["seconds"],
    )
    assert result.passed, result.message


def test_q6_a_flipped_sign_gets_the_hint() -> None:
    namespace, checks = lab_checks(SOURCE)
    new_run = {"instructions": 400_000, "exits": 1000, "seconds": 0.0125}
    result = run_check(
        checks["error_is_relative_to_the_measurement"],
        namespace["params_for"](1),
        new_run=new_run,
        predict_seconds=lambda instructions, exits: 0.015,
        prediction_error=lambda: (0.0125 - 0.015) / 0.0125,
    )
    assert not result.passed and "the sign" in result.message
