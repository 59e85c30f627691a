"""Tests for vlab.plots: the data each figure carries, its plain-text summary, and show() in and out of Jupyter."""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

import plotly.graph_objects as go
import pytest

from vlab.errors import VlabError
from vlab.measure import Sample, ratio
from vlab.plots import (
    Slice,
    SliceLike,
    bar_chart,
    distribution_chart,
    exits_chart,
    gantt_chart,
    grouped_bar_chart,
    line_chart,
    migration_chart,
    mimebundle,
    show,
    summarize,
)

NATIVE = Sample([0.010, 0.011, 0.012, 0.0105, 0.0108], label="native")
GUEST = Sample([0.020, 0.021, 0.025, 0.022, 0.0215], label="guest")


def test_bar_chart_of_samples_shows_medians_and_intervals_in_a_common_unit() -> None:
    fig = bar_chart({"native": NATIVE, "guest": GUEST}, title="loop", yaxis="time")
    bar = fig.data[0]
    assert list(bar.x) == ["native", "guest"]
    assert list(bar.y) == pytest.approx([10.8, 21.5])  # medians in ms
    assert fig.layout.yaxis.title.text == "time (ms)"
    low, high = GUEST.ci()
    assert bar.error_y.arrayminus[1] == pytest.approx((GUEST.median - low) * 1e3)
    assert bar.error_y.array[1] == pytest.approx((high - GUEST.median) * 1e3)


def test_bar_chart_of_a_ratio_and_of_bare_numbers() -> None:
    estimate = ratio(GUEST, NATIVE)
    fig = bar_chart({"guest/native": estimate, "expected": 2.0})
    bar = fig.data[0]
    assert list(bar.y) == pytest.approx([estimate.value, 2.0])
    assert bar.error_y.array[0] == pytest.approx(estimate.high - estimate.value)
    assert (bar.error_y.array[1], bar.error_y.arrayminus[1]) == (0, 0)
    assert bar.hovertext[0] == str(estimate)


def test_grouped_bar_chart_has_one_series_per_platform_across_workloads() -> None:
    compute, syscalls = ratio(GUEST, NATIVE), ratio(NATIVE, GUEST)
    fig = grouped_bar_chart({"compute": {"toy VMM": compute, "TCG": 3.0}, "syscalls": {"toy VMM": syscalls}},
                            yaxis="slowdown (×)")
    assert fig.layout.barmode == "group"
    series = {t.name: t for t in fig.data}
    assert list(series) == ["toy VMM", "TCG"]
    assert list(series["toy VMM"].x) == ["compute", "syscalls"]
    assert list(series["toy VMM"].y) == pytest.approx([compute.value, syscalls.value])
    assert series["toy VMM"].error_y.arrayminus[1] == pytest.approx(syscalls.value - syscalls.low)
    assert list(series["TCG"].x) == ["compute"]


def test_distribution_chart_shows_every_observation() -> None:
    fig = distribution_chart({"native": NATIVE, "guest": GUEST}, yaxis="time")
    assert [t.type for t in fig.data] == ["box", "box"]
    assert list(fig.data[1].y) == pytest.approx([v * 1e3 for v in GUEST.values])
    assert fig.data[1].boxpoints == "all"
    assert fig.layout.yaxis.title.text == "time (ms)"
    assert "  guest: 5 observations, median 21.5, range 20..25" in summarize(fig)


def test_gantt_chart_has_one_trace_per_guest_placed_by_start_and_duration() -> None:
    trace = [Slice(0, "web", 0.0, 1.0, "preempt"), Slice(1, "db", 0.0, 2.0, "block"),
             Slice(0, "db", 1.0, 3.0, "yield"), Slice(0, "web", 3.0, 3.5, "exit:wfi")]
    fig = gantt_chart(trace, title="rr")
    by_guest = {t.name: t for t in fig.data}
    assert set(by_guest) == {"web", "db"}
    assert list(by_guest["web"].base) == [0.0, 3.0]
    assert list(by_guest["web"].x) == [1.0, 0.5]
    assert list(by_guest["db"].y) == ["1", "0"]
    assert list(fig.layout.yaxis.categoryarray) == ["0", "1"]
    assert "exit:wfi" in by_guest["web"].hovertext[1]


def test_gantt_chart_accepts_any_record_with_the_slice_attributes() -> None:
    Record = namedtuple("Record", "lane guest start end reason")
    records = [Record("pCPU1", "g1", 2, 5, "preempt"), Record("pCPU0", "g2", 0, 4, "block")]
    assert all(isinstance(r, SliceLike) for r in records)
    fig = gantt_chart(records, time_unit="ticks")
    assert fig.layout.xaxis.title.text == "time (ticks)"
    assert list(fig.layout.yaxis.categoryarray) == ["pCPU0", "pCPU1"]


def test_gantt_chart_rejects_a_slice_ending_before_it_starts() -> None:
    with pytest.raises(VlabError, match="ends before it starts"):
        gantt_chart([Slice(0, "g", 2.0, 1.0)])


def test_exits_chart_lists_the_most_frequent_reason_first() -> None:
    fig = exits_chart({"csr": 10, "wfi": 3, "mmio": 40})
    assert list(fig.data[0].x) == ["mmio", "csr", "wfi"]
    assert list(fig.data[0].y) == [40, 10, 3]


def test_migration_chart_in_mib_with_the_budget_line_and_a_model() -> None:
    rounds = [{"round": 1, "remaining": 2**27, "transferred": 2**26, "time": 0.1},
              {"round": 2, "remaining": 2**24, "transferred": 2**27, "time": 0.3}]
    fig = migration_chart(rounds, threshold=2**23, predicted=[2**27, 2**23])
    assert list(fig.data[0].x) == [1, 2]
    assert list(fig.data[0].y) == [128.0, 16.0]
    assert list(fig.data[1].y) == [128.0, 8.0]
    assert fig.layout.shapes[0].y0 == 8.0


def test_migration_chart_rounds_are_whole_numbers_on_the_axis() -> None:
    rounds = [{"round": r, "remaining": 2**20 * (4 - r), "transferred": 0, "time": r / 10} for r in (1, 2, 3)]
    fig = migration_chart(rounds)
    axis = fig.layout.xaxis
    assert (axis.tickmode, axis.tick0, axis.dtick, axis.tickformat) == ("linear", 1, 1, "d")
    assert list(axis.range) == [0.4, 3.6]
    assert list(fig.data[0].text) == ["3.00 MiB", "2.00 MiB", "1.00 MiB"]  # each bar says its value
    many = migration_chart([{**rounds[0], "round": r} for r in range(1, 61)])
    assert many.layout.xaxis.dtick == 4  # at most ~15 labels, still whole rounds


def test_mimebundle_is_plotly_json_with_the_summary() -> None:
    fig = line_chart({"vCPU 0": [(0.0, 1.0), (0.5, 2.0)]}, title="cpu")
    bundle = mimebundle(fig)
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/plain"}
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["y"] == [1.0, 2.0]
    assert bundle["text/plain"] == summarize(fig)
    assert "plotly.js" not in json.dumps(bundle) and len(json.dumps(bundle)) < 10_000


def test_migration_chart_names_a_missing_key() -> None:
    with pytest.raises(VlabError, match="round 1 lacks transferred"):
        migration_chart([{"round": 1, "remaining": 1, "transferred": 0, "time": 0},
                         {"round": 2, "remaining": 1, "time": 0.1}])


def test_line_chart_draws_each_series() -> None:
    fig = line_chart({"vCPU 0": [(0.0, 0.0), (0.5, 0.4)], "vCPU 1": [(0.0, 0.0), (0.5, 0.1)]},
                     yaxis="host CPU (s)")
    assert [t.name for t in fig.data] == ["vCPU 0", "vCPU 1"]
    assert list(fig.data[0].y) == [0.0, 0.4]


def test_every_figure_serialises_without_a_browser() -> None:
    figures = [bar_chart({"a": NATIVE}), grouped_bar_chart({"g": {"s": NATIVE}}), distribution_chart({"a": NATIVE}),
               gantt_chart([Slice(0, "g", 0, 1)]), exits_chart({"x": 1}),
               migration_chart([{"round": 1, "remaining": 1, "transferred": 1, "time": 0}]),
               line_chart({"s": [(0, 1)]})]
    for fig in figures:
        assert isinstance(fig, go.Figure)
        assert json.loads(fig.to_json())["data"]


def test_summary_reads_like_the_figure() -> None:
    text = summarize(bar_chart({"native": NATIVE, "guest": GUEST}, title="compute loop", yaxis="time"))
    lines = text.splitlines()
    assert lines[0] == "compute loop (y: time (ms))"
    assert lines[1].startswith("  time: native: 10.8 ms [")
    assert "guest: 21.5 ms" in lines[1]
    gantt = summarize(gantt_chart([Slice(0, "a", 0, 1), Slice(1, "a", 1, 3)]))
    assert "a: 2 slices, busy 3 on lanes 0, 1" in gantt


def test_summary_elides_long_bar_lists() -> None:
    text = summarize(exits_chart({f"r{i:02}": 100 - i for i in range(20)}))
    assert text.endswith("… and 12 more")


def test_show_prints_the_summary_outside_a_notebook(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLAB_PLAIN", "1")
    fig = exits_chart({"wfi": 2})
    show(fig)
    assert capsys.readouterr().out == summarize(fig) + "\n"


def test_show_in_a_real_jupyter_kernel_outputs_a_plotly_figure() -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    outputs: list[dict[str, Any]] = []
    try:
        client.execute_interactive("import os; os.environ.pop('VLAB_PLAIN', None)\n"
                                   "from vlab.plots import exits_chart, show\n"
                                   "show(exits_chart({'wfi': 2}))",
                                   output_hook=outputs.append, timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    displayed = [m["content"]["data"] for m in outputs if m["msg_type"] == "display_data"]
    assert displayed, [m["msg_type"] for m in outputs]
    assert any("application/vnd.plotly.v1+json" in data for data in displayed)
