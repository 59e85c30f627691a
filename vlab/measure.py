"""Measuring things properly: repeats, medians, confidence intervals, ratios, fits.

The labs teach measurement as much as virtualization, so this module keeps the
statistics small enough to read in one sitting:

* :func:`repeat` times a callable with :func:`time.perf_counter`, discarding
  warm-up runs, and returns a :class:`Sample`.
* :class:`Sample` holds raw observations and gives the robust summaries (median,
  min/max) and the classic ones (mean, standard deviation), plus a confidence
  interval for the median by percentile bootstrap or by order statistics.
* :func:`ratio` compares two samples as a ratio of medians with a bootstrap
  interval: overhead is reported as "1.83× [1.71, 1.97]", never as a bare number.
* :func:`jain_index` is Jain's fairness index for CPU shares.
* :func:`fit_linear` is least squares (QR by modified Gram–Schmidt) for cost
  models such as ``time = instructions × cost + exits × cost_per_exit``.

Pure Python on purpose: numpy is not among vlab's dependencies, and samples in
the labs are small (tens to a few thousand values). Everything random takes a
``seed`` and uses its own :class:`random.Random`, so results are reproducible.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vlab.errors import VlabError

__all__ = [
    "Estimate",
    "LinearFit",
    "Sample",
    "fit_linear",
    "format_bytes",
    "format_seconds",
    "format_value",
    "jain_index",
    "ratio",
    "repeat",
    "unit_scale",
]

#: bootstrap resamples by default: enough for stable 95 % percentiles, fast in pure Python
DEFAULT_RESAMPLES = 2000
CI_METHODS = ("bootstrap", "order")


# ---------------------------------------------------------------- formatting


def format_seconds(seconds: float, digits: int = 3) -> str:
    """Format a duration with a readable unit: ``format_seconds(0.01234) == '12.3 ms'``."""
    factor, unit = _time_scale(seconds)
    return f"{_significant(seconds * factor, digits)} {unit}"


def format_bytes(count: float, digits: int = 3) -> str:
    """Format a byte count in binary units: ``format_bytes(3 * 2**20) == '3.00 MiB'``."""
    factor, unit = _bytes_scale(count)
    return f"{_significant(count * factor, digits)} {unit}"


def format_value(value: float, unit: str = "", digits: int = 3) -> str:
    """Format *value* in *unit*: seconds and bytes get scaled units, ``×`` sticks to the number."""
    factor, shown = unit_scale(value, unit)
    return _with_unit(_significant(value * factor, digits), shown)


def _significant(x: float, digits: int = 3) -> str:
    """*x* with *digits* significant digits, keeping trailing zeros (1.10, not 1.1) and
    never switching to exponent notation for large numbers (1234, not 1.23e+03)."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 10**digits:
        return f"{x:.0f}"
    return f"{x:#.{digits}g}".rstrip(".")


def _time_scale(seconds: float) -> tuple[float, str]:
    magnitude = abs(seconds)
    for factor, unit in ((1.0, "s"), (1e3, "ms"), (1e6, "µs")):
        if magnitude >= 1.0 / factor:
            return factor, unit
    return (1e9, "ns") if magnitude else (1.0, "s")


def _bytes_scale(count: float) -> tuple[float, str]:
    magnitude = abs(count)
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if magnitude >= 1024**power:
            return 1024.0**-power, unit
    return 1.0, "B"


def unit_scale(value: float, unit: str) -> tuple[float, str]:
    """The factor and unit to display *value* with: ``unit_scale(0.012, "s") == (1e3, "ms")``.

    Seconds and bytes are scaled; any other unit is kept as it is (factor 1).
    """
    if unit == "s":
        return _time_scale(value)
    if unit == "B":
        return _bytes_scale(value)
    return 1.0, unit


def _with_unit(number: str, unit: str) -> str:
    if not unit:
        return number
    return f"{number}{unit}" if unit == "×" else f"{number} {unit}"


# ---------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval.

    :param value: the estimate (a median, a ratio of medians, …).
    :param low: lower bound of the interval.
    :param high: upper bound of the interval.
    :param level: confidence level of the interval, e.g. ``0.95``.
    :param n: the number of observations behind it (one per sample compared).
    :param unit: ``"s"``, ``"B"``, ``"×"`` for ratios, or any label.
    :param method: how the interval was computed (``"bootstrap"`` or ``"order"``).
    """

    value: float
    low: float
    high: float
    level: float
    n: tuple[int, ...]
    unit: str = ""
    method: str = "bootstrap"

    def __str__(self) -> str:
        factor, unit = unit_scale(self.value, self.unit)
        point = _with_unit(_significant(self.value * factor), unit)
        counts = "/".join(str(k) for k in self.n) if len(set(self.n)) > 1 else str(self.n[0])
        return (
            f"{point} [{_significant(self.low * factor)}, {_significant(self.high * factor)}] "
            f"({self.level * 100:g} % CI, n={counts})"
        )

    def contains(self, x: float) -> bool:
        """Whether *x* lies inside the interval (bounds included)."""
        return self.low <= x <= self.high

    @property
    def halfwidth(self) -> float:
        """Half the interval's width: a quick '±' for tables."""
        return (self.high - self.low) / 2


# ---------------------------------------------------------------- samples


@dataclass(frozen=True, init=False)
class Sample:
    """Repeated observations of one quantity (by default a wall-clock time in seconds).

    :param values: the observations, in the order they were taken.
    :param unit: ``"s"`` for seconds, ``"B"`` for bytes, or any label.
    :param label: what was measured, used by plots and tables.
    :raises VlabError: if *values* is empty or holds a non-finite number.
    """

    values: tuple[float, ...]
    unit: str = "s"
    label: str = ""

    def __init__(self, values: Iterable[float], unit: str = "s", label: str = "") -> None:
        observed = tuple(float(v) for v in values)
        if not observed:
            raise VlabError("a sample needs at least one observation", field="values", value=[],
                            fix="measure at least once, e.g. repeat(fn, n=5)")
        bad = [v for v in observed if not math.isfinite(v)]
        if bad:
            raise VlabError("observations must be finite numbers", field="values", value=bad[0],
                            fix="drop failed runs before building the Sample")
        object.__setattr__(self, "values", observed)
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "label", label)

    @property
    def n(self) -> int:
        """Number of observations."""
        return len(self.values)

    @property
    def median(self) -> float:
        """The median: the summary to report for timings (robust to the odd slow run)."""
        return statistics.median(self.values)

    @property
    def mean(self) -> float:
        """Arithmetic mean."""
        return statistics.fmean(self.values)

    @property
    def stdev(self) -> float:
        """Sample standard deviation (n − 1 in the denominator); 0.0 for a single observation."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def min(self) -> float:
        """Smallest observation."""
        return min(self.values)

    @property
    def max(self) -> float:
        """Largest observation."""
        return max(self.values)

    def ci(
        self,
        level: float = 0.95,
        method: str = "bootstrap",
        *,
        resamples: int = DEFAULT_RESAMPLES,
        seed: int = 0,
    ) -> tuple[float, float]:
        """A confidence interval for the median.

        ``"bootstrap"`` resamples the observations with replacement *resamples*
        times and takes the percentiles of the resampled medians (deterministic
        for a given *seed*). ``"order"`` is the distribution-free interval from
        order statistics (binomial), conservative and needing no randomness.

        :param level: confidence level, strictly between 0 and 1.
        :param method: ``"bootstrap"`` or ``"order"``.
        :param resamples: bootstrap resamples.
        :param seed: seed of the bootstrap's random generator.
        :raises VlabError: for fewer than 2 observations, a bad level or method.
        """
        _check_level(level)
        self._need_two("ci")
        if method == "bootstrap":
            rng = random.Random(seed)
            medians = sorted(_resampled_median(self.values, rng) for _ in range(_check_resamples(resamples)))
            tail = (1 - level) / 2
            return _quantile(medians, tail), _quantile(medians, 1 - tail)
        if method == "order":
            return _order_statistic_ci(sorted(self.values), level)
        raise VlabError(f"unknown confidence-interval method (known: {', '.join(CI_METHODS)})",
                        field="method", value=method, fix='use method="bootstrap"')

    def estimate(self, level: float = 0.95, method: str = "bootstrap", *, seed: int = 0) -> Estimate:
        """The median with its confidence interval, as an :class:`Estimate`."""
        low, high = self.ci(level, method, seed=seed)
        return Estimate(self.median, low, high, level, (self.n,), self.unit, method)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{format_value(self.median, self.unit)} (n=1)"
        return str(self.estimate())

    def _need_two(self, operation: str) -> None:
        if self.n < 2:
            raise VlabError(f"{operation} needs at least 2 observations, the sample has {self.n}",
                            field="values", value=list(self.values), fix="repeat the measurement, e.g. n=9")


def repeat(fn: Callable[[], Any], n: int, warmup: int = 1, *, label: str = "") -> Sample:
    """Time ``fn()`` *n* times after *warmup* discarded runs.

    Warm-up runs absorb one-off costs (imports, caches, the first page faults)
    that would otherwise land in the first observation.

    :param fn: a callable taking no argument; its result is ignored.
    :param n: number of timed runs (at least 1; use 5 or more for an interval).
    :param warmup: untimed runs before the timed ones.
    :param label: what is measured, kept on the :class:`Sample`.
    :return: the wall-clock durations in seconds.
    """
    if n < 1:
        raise VlabError("n must be at least 1", field="n", value=n, fix="e.g. repeat(fn, n=9)")
    if warmup < 0:
        raise VlabError("warmup cannot be negative", field="warmup", value=warmup, fix="use warmup=0 or more")
    for _ in range(warmup):
        fn()
    durations = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return Sample(durations, unit="s", label=label)


def ratio(
    a: Sample,
    b: Sample,
    level: float = 0.95,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """The ratio of medians ``median(a) / median(b)`` with a percentile-bootstrap interval.

    Each bootstrap round resamples *a* and *b* independently. Typical use is
    overhead: ``ratio(in_guest, native)`` reads "the guest is 1.83× slower".

    :raises VlabError: if either sample has fewer than 2 observations or *b*'s median is 0.
    """
    _check_level(level)
    a._need_two("ratio")
    b._need_two("ratio")
    if b.median == 0:
        raise VlabError("the baseline's median is 0, so the ratio is undefined", field="b",
                        value=b.label or list(b.values)[:5], fix="use a baseline that takes measurable time")
    rng = random.Random(seed)
    ratios = []
    for _ in range(_check_resamples(resamples)):
        denominator = _resampled_median(b.values, rng)
        numerator = _resampled_median(a.values, rng)
        # a resampled baseline median of 0 only happens with zeros in b: an infinite ratio is honest
        ratios.append(numerator / denominator if denominator else math.inf)
    ratios.sort()
    tail = (1 - level) / 2
    return Estimate(a.median / b.median, _quantile(ratios, tail), _quantile(ratios, 1 - tail),
                    level, (a.n, b.n), "×", "bootstrap")


def _resampled_median(values: Sequence[float], rng: random.Random) -> float:
    return statistics.median(rng.choices(values, k=len(values)))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted data (the common 'type 7' definition)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    weight = position - below
    if weight == 0:
        return ordered[below]
    return ordered[below] + (ordered[above] - ordered[below]) * weight


def _order_statistic_ci(ordered: Sequence[float], level: float) -> tuple[float, float]:
    """Distribution-free CI for the median: the widest symmetric pair of order statistics not exceeding
    the requested miss probability (the binomial(n, 1/2) tails)."""
    n = len(ordered)
    alpha = 1 - level
    # P(X <= k) for X ~ Binomial(n, 1/2); choose the largest k with 2·P(X <= k) <= alpha
    cumulative, k = 0.0, -1
    for j in range(n // 2 + 1):
        cumulative += math.comb(n, j) / 2**n
        if 2 * cumulative > alpha:
            break
        k = j
    if k < 0:  # too few observations for this level: the whole range is the best we can say
        return ordered[0], ordered[-1]
    return ordered[k], ordered[n - 1 - k]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise VlabError("the confidence level must be strictly between 0 and 1", field="level", value=level,
                        fix="use level=0.95 for a 95 % interval")


def _check_resamples(resamples: int) -> int:
    if resamples < 100:
        raise VlabError("too few bootstrap resamples for stable percentiles", field="resamples",
                        value=resamples, fix="use resamples=2000 (the default)")
    return resamples


# ---------------------------------------------------------------- fairness


def jain_index(shares: Iterable[float]) -> float:
    """Jain's fairness index ``(Σx)² / (n · Σx²)``: 1 when all shares are equal, 1/n when one takes all.

    Normalise shares by entitlement first (e.g. CPU time ÷ weight) to judge a
    weighted scheduler.

    :raises VlabError: for no shares, a negative share, or all shares zero.
    """
    xs = [float(x) for x in shares]
    if not xs:
        raise VlabError("Jain's index needs at least one share", field="shares", value=[],
                        fix="pass one number per guest, e.g. CPU seconds each received")
    negative = [x for x in xs if x < 0]
    if negative:
        raise VlabError("shares cannot be negative", field="shares", value=negative[0],
                        fix="pass amounts received (CPU seconds, throughput), which are ≥ 0")
    squares = math.fsum(x * x for x in xs)
    if squares == 0:
        raise VlabError("all shares are zero, so fairness is undefined", field="shares", value=xs,
                        fix="measure over an interval in which the guests ran")
    return math.fsum(xs) ** 2 / (len(xs) * squares)


# ---------------------------------------------------------------- least squares


@dataclass(frozen=True)
class LinearFit:
    """The result of :func:`fit_linear`; unpacks as ``coefficients, residuals = fit``.

    :ivar coefficients: one per column of *xs*, then the intercept if one was fitted.
    :ivar residuals: ``y − prediction`` for each observation.
    :ivar intercept: whether the last coefficient is an intercept.
    """

    coefficients: tuple[float, ...]
    residuals: tuple[float, ...]
    intercept: bool = False

    def __iter__(self) -> Iterator[tuple[float, ...]]:
        return iter((self.coefficients, self.residuals))

    def predict(self, x: Sequence[float]) -> float:
        """The model's value at *x* (one number per column, without the intercept's 1)."""
        row = [*x, 1.0] if self.intercept else list(x)
        if len(row) != len(self.coefficients):
            raise VlabError(f"expected {len(self.coefficients) - self.intercept} inputs, got {len(x)}",
                            field="x", value=list(x), fix="pass one number per column used in the fit")
        return math.fsum(c * v for c, v in zip(self.coefficients, row, strict=True))

    @property
    def rss(self) -> float:
        """Residual sum of squares."""
        return math.fsum(r * r for r in self.residuals)


def fit_linear(
    xs: Sequence[Sequence[float]],
    ys: Sequence[float],
    *,
    intercept: bool = False,
) -> LinearFit:
    """Least-squares fit of ``y ≈ Σ cᵢ·xᵢ`` (plus a constant if *intercept*).

    For the lab's cost model pass ``xs = [(instructions, exits), …]`` and
    ``ys = [seconds, …]``; the coefficients are (cost per instruction, cost per
    exit). Solved by QR (modified Gram–Schmidt), which stays accurate when the
    columns differ by orders of magnitude, as instruction and exit counts do.

    :raises VlabError: on mismatched lengths, too few observations, or columns
        that are linearly dependent (e.g. exits always proportional to instructions).
    """
    rows = [[float(v) for v in x] + ([1.0] if intercept else []) for x in xs]
    targets = [float(y) for y in ys]
    _check_design(rows, targets)
    q_columns, r = _gram_schmidt([list(col) for col in zip(*rows, strict=True)])
    rhs = [math.fsum(q * y for q, y in zip(column, targets, strict=True)) for column in q_columns]
    coefficients = _back_substitute(r, rhs)
    residuals = tuple(y - math.fsum(c * v for c, v in zip(coefficients, row, strict=True))
                      for row, y in zip(rows, targets, strict=True))
    return LinearFit(tuple(coefficients), residuals, intercept)


def _check_design(rows: list[list[float]], targets: list[float]) -> None:
    if len(rows) != len(targets):
        raise VlabError(f"xs has {len(rows)} rows but ys has {len(targets)} values", field="ys",
                        value=len(targets), fix="pass one y per row of xs")
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise VlabError("all rows of xs must have the same number of columns", field="xs",
                        value=sorted(widths), fix="e.g. xs=[(instructions, exits), ...]")
    width = widths.pop() if widths else 0
    if width == 0 or len(rows) < width:
        raise VlabError(f"{len(rows)} observations cannot determine {width} coefficients", field="xs",
                        value=len(rows), fix="measure at least as many workloads as there are coefficients")


def _gram_schmidt(columns: list[list[float]]) -> tuple[list[list[float]], list[list[float]]]:
    k = len(columns)
    r = [[0.0] * k for _ in range(k)]
    q: list[list[float]] = []
    for j, col in enumerate(columns):
        v = list(col)
        for i, qi in enumerate(q):
            r[i][j] = math.fsum(a * b for a, b in zip(qi, v, strict=True))
            v = [a - r[i][j] * b for a, b in zip(v, qi, strict=True)]
        norm = math.sqrt(math.fsum(a * a for a in v))
        original = math.sqrt(math.fsum(a * a for a in col))
        # what is left after removing the earlier columns' directions is rounding noise: dependent
        if original == 0 or norm <= 1e-10 * original:
            raise VlabError("the columns of xs are linearly dependent: the coefficients are not determined",
                            field="xs", value=f"column {j}",
                            fix="vary the inputs independently (e.g. workloads with different exit rates)")
        r[j][j] = norm
        q.append([a / norm for a in v])
    return q, r


def _back_substitute(r: list[list[float]], rhs: list[float]) -> list[float]:
    k = len(rhs)
    solution = [0.0] * k
    for i in reversed(range(k)):
        known = math.fsum(r[i][j] * solution[j] for j in range(i + 1, k))
        solution[i] = (rhs[i] - known) / r[i][i]
    return solution
