"""Predict, then measure: no prediction, no measurement; the result shows both."""

from __future__ import annotations

import math

import pytest

from vlab.grading.predict import Prediction, predict_then_measure


def test_without_a_prediction_nothing_is_measured(capsys: pytest.CaptureFixture[str]) -> None:
    measured: list[int] = []

    def stub() -> float:
        raise NotImplementedError

    def measure() -> float:
        measured.append(1)
        return 42.0

    for predict in (stub, lambda: None, lambda: "fast", lambda: math.nan, lambda: True, lambda: math.inf):
        assert predict_then_measure(predict, measure, what="loop time", unit="s") is None
    assert measured == []
    out = capsys.readouterr().out
    assert "write your prediction first" in out and "42" not in out


def test_a_prediction_is_recorded_before_the_measurement(capsys: pytest.CaptureFixture[str]) -> None:
    order: list[str] = []
    shown: list[Prediction] = []

    def predict() -> float:
        order.append("predict")
        return 1.5

    def measure() -> float:
        order.append("measure")
        return 2.0

    result = predict_then_measure(predict, measure, what="loop time", unit="s", show=shown.append)
    assert order == ["predict", "measure"]
    assert result is not None and (result.predicted, result.measured) == (1.5, 2.0)
    assert result.error == pytest.approx(-0.25) and shown == [result]
    assert "you predicted 1.5 s, measured 2 s (your model is off by -25.0%)" in capsys.readouterr().out


def test_a_failing_model_is_the_students_error_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError):
        predict_then_measure(lambda: 1 / 0, lambda: 1.0, what="x")


def test_zero_measurement_has_infinite_error() -> None:
    assert Prediction("x", "", 1.0, 0.0).error == math.inf
