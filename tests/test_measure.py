"""Tests for vlab.measure: timing, summaries, confidence intervals, ratios, fairness, least squares."""

from __future__ import annotations

import random
import re
import statistics
import time

import pytest

from vlab.errors import VlabError
from vlab.measure import (
    Estimate,
    Sample,
    fit_linear,
    format_bytes,
    format_seconds,
    format_value,
    jain_index,
    ratio,
    repeat,
    unit_scale,
)

DATA = [1.0, 1.1, 0.9, 1.05, 1.2, 0.95, 1.0, 1.02, 0.98]


def test_repeat_discards_warmup_runs_and_times_the_rest() -> None:
    calls = []
    sample = repeat(lambda: calls.append(1), n=5, warmup=2, label="append")
    assert len(calls) == 7
    assert sample.n == 5
    assert sample.label == "append"
    assert all(v >= 0 for v in sample.values)


def test_repeat_measures_wall_clock_time_of_the_call() -> None:
    sample = repeat(lambda: time.sleep(0.005), n=3, warmup=0)
    assert sample.min >= 0.005  # sleep never returns early, so a shorter reading would be a timing bug


@pytest.mark.parametrize(("n", "warmup"), [(0, 1), (3, -1)])
def test_repeat_rejects_bad_counts(n: int, warmup: int) -> None:
    with pytest.raises(VlabError):
        repeat(lambda: None, n=n, warmup=warmup)


def test_sample_summaries_match_the_statistics_module() -> None:
    sample = Sample(DATA)
    assert sample.median == statistics.median(DATA)
    assert sample.mean == pytest.approx(statistics.fmean(DATA))
    assert sample.stdev == pytest.approx(statistics.stdev(DATA))
    assert (sample.min, sample.max) == (0.9, 1.2)
    assert Sample([3.0]).stdev == 0.0


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_sample_rejects_empty_or_non_finite_values(values: list[float]) -> None:
    with pytest.raises(VlabError, match="values"):
        Sample(values)


def test_bootstrap_ci_is_deterministic_for_a_seed_and_brackets_the_median() -> None:
    sample = Sample(DATA)
    low, high = sample.ci(seed=7)
    assert sample.ci(seed=7) == (low, high)
    assert low <= sample.median <= high
    assert sample.min <= low < high <= sample.max


def test_bootstrap_ci_narrows_with_more_observations() -> None:
    rng = random.Random(1)
    small = Sample([rng.gauss(10, 1) for _ in range(10)])
    large = Sample([rng.gauss(10, 1) for _ in range(400)])
    assert large.estimate().halfwidth < small.estimate().halfwidth / 2


@pytest.mark.parametrize("method", ["bootstrap", "order"])
def test_ci_of_the_median_covers_the_true_median_about_95_percent_of_the_time(method: str) -> None:
    rng = random.Random(2024)
    trials, hits = 120, 0
    for trial in range(trials):
        # exponential with rate 1: skewed like timings, true median ln 2
        sample = Sample([rng.expovariate(1.0) for _ in range(25)])
        low, high = sample.ci(0.95, method, resamples=400, seed=trial) if method == "bootstrap" else \
            sample.ci(0.95, method)
        hits += low <= 0.6931471805599453 <= high
    assert 0.85 <= hits / trials <= 1.0


def test_order_statistic_ci_picks_the_binomial_order_statistics() -> None:
    # n = 9 at 95 %: P(Binomial(9, 1/2) <= 1) = 10/512, doubled 0.039 <= 0.05; <= 2 would be 0.18
    ordered = sorted(DATA)
    assert Sample(DATA).ci(method="order") == (ordered[1], ordered[7])


def test_ci_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(VlabError, match="at least 2"):
        Sample([1.0]).ci()
    with pytest.raises(VlabError, match="level"):
        Sample(DATA).ci(level=95)
    with pytest.raises(VlabError, match="method"):
        Sample(DATA).ci(method="student")
    with pytest.raises(VlabError, match="resamples"):
        Sample(DATA).ci(resamples=10)


def test_ratio_of_medians_with_its_interval() -> None:
    base = Sample(DATA)
    doubled = Sample([2 * v for v in DATA])
    estimate = ratio(doubled, base, seed=3)
    assert estimate.value == pytest.approx(2.0)
    assert estimate.contains(2.0)
    assert estimate.low < 2.0 < estimate.high
    assert estimate.n == (9, 9)
    assert ratio(doubled, base, seed=3) == estimate


def test_ratio_interval_excludes_one_for_clearly_different_samples() -> None:
    rng = random.Random(5)
    slow = Sample([rng.gauss(1.8, 0.05) for _ in range(9)])
    fast = Sample([rng.gauss(1.0, 0.05) for _ in range(9)])
    assert not ratio(slow, fast).contains(1.0)


def test_ratio_rejects_a_zero_baseline() -> None:
    with pytest.raises(VlabError, match="baseline"):
        ratio(Sample(DATA), Sample([0.0, 0.0, 0.0]))


def test_estimate_reads_like_a_lab_report() -> None:
    text = str(Estimate(1.8312, 1.7104, 1.9745, 0.95, (9, 9), "×"))
    assert text == "1.83× [1.71, 1.97] (95 % CI, n=9)"
    assert str(Estimate(2.0, 1.5, 2.5, 0.9, (9, 7), "×")) == "2.00× [1.50, 2.50] (90 % CI, n=9/7)"


def test_sample_str_scales_seconds_to_a_readable_unit() -> None:
    text = str(Sample([0.0123, 0.0125, 0.0121, 0.0124]))
    assert re.fullmatch(r"12\.\d ms \[12\.\d, 12\.\d\] \(95 % CI, n=4\)", text), text


def test_formatting_helpers() -> None:
    assert format_seconds(0.01234) == "12.3 ms"
    assert format_seconds(2.5e-6) == "2.50 µs"
    assert format_seconds(75.0) == "75.0 s"
    assert format_bytes(3 * 2**20) == "3.00 MiB"
    assert format_bytes(512) == "512 B"
    assert format_value(1234.4, "×") == "1234×"
    assert format_value(0.5, "guests") == "0.500 guests"
    assert unit_scale(0.012, "s") == (1e3, "ms")
    assert unit_scale(5 * 2**30, "B") == (2.0**-30, "GiB")
    assert unit_scale(7.0, "×") == (1.0, "×")


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_takes_all() -> None:
    assert jain_index([3.0, 3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert jain_index([5.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    # two guests at 1:3: (4)^2 / (2 * 10) = 0.8
    assert jain_index([1.0, 3.0]) == pytest.approx(0.8)


@pytest.mark.parametrize("shares", [[], [1.0, -1.0], [0.0, 0.0]])
def test_jain_index_rejects_undefined_inputs(shares: list[float]) -> None:
    with pytest.raises(VlabError, match="shares"):
        jain_index(shares)


def test_fit_linear_recovers_the_cost_model_exactly() -> None:
    cost, per_exit = 2e-9, 1e-5
    xs = [(1e6, 10), (2e6, 100), (3e6, 50), (5e6, 500), (8e6, 7)]
    ys = [i * cost + e * per_exit for i, e in xs]
    coefficients, residuals = fit_linear(xs, ys)
    assert coefficients == pytest.approx((cost, per_exit), rel=1e-9)
    assert max(abs(r) for r in residuals) < 1e-15


def test_fit_linear_with_noise_minimises_the_residual_sum_of_squares() -> None:
    rng = random.Random(9)
    xs = [(float(i), float(i % 4)) for i in range(1, 30)]
    ys = [3.0 * a + 0.5 * b + rng.gauss(0, 0.1) for a, b in xs]
    fit = fit_linear(xs, ys)
    assert fit.coefficients == pytest.approx((3.0, 0.5), abs=0.05)
    # least squares: nudging any coefficient can only increase the residual sum of squares
    for k in range(2):
        for step in (-1e-3, 1e-3):
            nudged = list(fit.coefficients)
            nudged[k] += step
            rss = sum((y - (nudged[0] * a + nudged[1] * b)) ** 2 for (a, b), y in zip(xs, ys, strict=True))
            assert rss > fit.rss


def test_fit_linear_with_intercept_and_prediction() -> None:
    xs = [(1.0,), (2.0,), (3.0,), (4.0,)]
    ys = [5.0, 7.0, 9.0, 11.0]  # y = 2x + 3
    fit = fit_linear(xs, ys, intercept=True)
    assert fit.coefficients == pytest.approx((2.0, 3.0))
    assert fit.predict((10.0,)) == pytest.approx(23.0)
    with pytest.raises(VlabError, match="inputs"):
        fit.predict((1.0, 2.0))


def test_fit_linear_without_intercept_goes_through_the_origin() -> None:
    fit = fit_linear([(1.0,), (2.0,), (3.0,), (4.0,)], [5.0, 7.0, 9.0, 11.0])
    assert len(fit.coefficients) == 1
    assert fit.predict((0.0,)) == 0.0
    assert fit.rss > 1.0


def test_fit_linear_reports_dependent_columns_and_shape_errors() -> None:
    with pytest.raises(VlabError, match="linearly dependent"):
        fit_linear([(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)], [1.0, 2.0, 3.0])
    with pytest.raises(VlabError, match="rows"):
        fit_linear([(1.0,), (2.0,)], [1.0])
    with pytest.raises(VlabError, match="observations"):
        fit_linear([(1.0, 2.0)], [1.0])
    with pytest.raises(VlabError, match="columns"):
        fit_linear([(1.0, 2.0), (1.0,)], [1.0, 2.0])
