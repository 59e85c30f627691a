"""Predict, then measure: a measurement cell that shows its figure only once a prediction is recorded.

A student who sees the measured value first can "predict" it by copying. So the measuring cell calls
:func:`predict_then_measure` with the student's *model* (a function call that predicts the figure
from the instance's inputs) and the measurement: the model runs first; only if it gives a number is
the measurement taken and shown next to it. The graded (hidden) check then evaluates the same model
function on *other* inputs than the ones printed, so copying the printed figure earns nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Prediction", "predict_then_measure"]


@dataclass(frozen=True)
class Prediction:
    """A recorded prediction and the measurement it was compared with."""

    what: str
    unit: str
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        """(predicted − measured) ÷ measured; inf if the measurement is 0."""
        return (self.predicted - self.measured) / self.measured if self.measured else math.inf

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.what}: you predicted {self.predicted:.4g}{unit}, measured {self.measured:.4g}{unit} "
            f"(your model is off by {self.error:+.1%})"
        )

    def __str__(self) -> str:
        return self.text()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def predict_then_measure(
    predict: Callable[[], object],
    measure: Callable[[], float],
    *,
    what: str,
    unit: str = "",
    show: Callable[[Prediction], object] | None = None,
) -> Prediction | None:
    """Record the prediction, then measure and show both; without a prediction, measure nothing.

    :param predict: calls the student's model on this instance's inputs (e.g.
        ``lambda: throttled_seconds(wall, cpu, quota)``); a stub raising ``NotImplementedError``, or a
        value that is not a finite number, counts as no prediction.
    :param measure: takes the measurement (only called once the prediction is recorded).
    :param what: what is predicted, with the instance, e.g. ``"loop time under a 25 % quota"``.
    :param unit: the unit of both numbers, e.g. ``"s"``.
    :param show: draws a figure of the result (called only after both are known).
    :returns: the :class:`Prediction`, or None if there was no prediction (and so no measurement).
    """
    try:
        raw = predict()
    except NotImplementedError:
        print(f"{what}: write your prediction first; the measurement is shown only once it gives a number.")
        return None
    predicted = _number(raw)
    if predicted is None:
        print(f"{what}: your prediction must be a finite number (got {raw!r}); the measurement stays hidden.")
        return None
    result = Prediction(what, unit, predicted, float(measure()))
    print(result.text())
    if show is not None:
        show(result)
    return result
