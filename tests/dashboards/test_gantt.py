"""Tests for vlab.dashboards.gantt: a live Gantt chart over a growing scheduler trace."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vlab.dashboards import GanttView
from vlab.plots import Slice


@dataclass(frozen=True)
class VmmSlice:
    """A record as a scheduler might write it, with the SliceLike attributes and more."""

    lane: int
    guest: str
    start: float
    end: float
    reason: str
    credits: int = 0


def test_slices_appended_to_the_trace_show_on_the_next_refresh() -> None:
    trace: list[VmmSlice] = [VmmSlice(0, "cpu-bound", 0, 30, "preempt")]
    with GanttView(trace, title="credit", time_unit="ms", interval=0) as view:
        assert [t.name for t in view.chart.data] == ["cpu-bound"]
        trace.append(VmmSlice(1, "io-bound", 0, 5, "block"))
        trace.append(VmmSlice(0, "io-bound", 30, 32, "block"))
        view.refresh(force=True)
        by_guest = {t.name: t for t in view.chart.data}
        assert set(by_guest) == {"cpu-bound", "io-bound"}
        assert list(by_guest["io-bound"].base) == [0, 30]
        assert view.chart.layout.xaxis.title.text == "time (ms)"


def test_a_callable_source_is_called_on_each_refresh() -> None:
    calls = []

    def source() -> list[Slice]:
        calls.append(1)
        return [Slice("pCPU0", "a", 0, len(calls))]

    with GanttView(source, interval=0) as view:
        view.refresh(force=True)
        assert len(calls) == 2
        assert list(view.chart.data[0].x) == [2]


def test_shares_and_text_report_each_guests_part_of_the_busy_time() -> None:
    trace = [Slice(0, "web", 0, 3, "preempt"), Slice(1, "db", 0, 1, "block"), Slice(0, "db", 3, 4, "yield")]
    with GanttView(trace, title="rr") as view:
        assert view.shares() == pytest.approx({"db": 0.4, "web": 0.6})
        lines = view.text().splitlines()
        assert lines[0] == "rr: 3 slices over 4 s"
        assert lines[1].split() == ["db", "40.0%", "of", "busy", "time,", "2", "slices"]


def test_a_bad_slice_is_reported_in_the_panel_not_raised() -> None:
    trace = [Slice(0, "a", 0, 1)]
    with GanttView(trace, interval=0) as view:
        trace.append(Slice(0, "a", 5, 4))
        view.refresh(force=True)
        assert view.error is not None and "ends before it starts" in view.error
        assert "error:" in view.text()


def test_an_empty_trace_says_so() -> None:
    with GanttView([]) as view:
        assert view.text() == "scheduler trace: no slices yet"
