"""A live Gantt chart of a scheduler trace: which guest ran on which lane, when, and why it stopped.

The figure is :func:`vlab.plots.gantt_chart` in a :class:`~vlab.dashboards.chart.LiveChart`. The trace is
re-read on every redraw, so a scheduler appending :class:`~vlab.plots.SliceLike`
records to a list (or a callable returning the slices so far) shows up live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import plotly.graph_objects as go

from vlab.dashboards.chart import LiveChart
from vlab.dashboards.panel import DEFAULT_INTERVAL, Panel
from vlab.plots import SliceLike, gantt_chart, gantt_series

__all__ = ["GanttView", "TraceSource"]

#: a trace, or a function returning the trace so far
TraceSource = Iterable[SliceLike] | Callable[[], Iterable[SliceLike]]


class GanttView(Panel):
    """A scheduler's trace as a Gantt chart, with CPU share per guest in the text form.

    ::

        view = GanttView(scheduler.trace, title="credit scheduler")
        view.start_updates()          # while the scheduler runs in a thread
        ...
        view.refresh(force=True)      # or redraw by hand after each run

    :param trace: a list of slices (re-read on every redraw) or a callable returning them.
    :param time_unit: the unit of the slices' ``start``/``end``.
    """

    def __init__(self, trace: TraceSource, *, title: str = "", time_unit: str = "s",
                 interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(interval=interval, title=title)
        self.trace = trace
        self.time_unit = time_unit
        self.slices: list[SliceLike] = []
        self.chart = gantt_chart([], title=title, time_unit=time_unit)
        self.chart_view = LiveChart(self.chart, height=160)
        self.widget.children = (self.chart_view.widget, self.status)
        self.refresh(force=True)

    def _trace_now(self) -> list[SliceLike]:
        source = self.trace() if callable(self.trace) else self.trace
        return list(source)

    def _update(self) -> None:
        slices = self._trace_now()
        lanes, bars = gantt_series(slices, self.time_unit)
        self.slices = slices
        with self.chart.batch_update():
            if [trace.name for trace in self.chart.data] != [bar["name"] for bar in bars]:
                # a guest appeared: new traces; otherwise the existing ones are updated in place
                self.chart.data = ()
                self.chart.add_traces([go.Bar(orientation="h", hoverinfo="text", name=bar["name"]) for bar in bars])
            for trace, bar in zip(self.chart.data, bars, strict=True):
                trace.update(bar)
            self.chart.layout.yaxis.categoryarray = lanes
            self.chart.layout.height = 120 + 40 * len(lanes)
        self.chart_view.draw()

    def figure(self) -> go.Figure:
        return self.chart

    def shares(self) -> dict[str, float]:
        """Each guest's fraction of all the busy time in the trace (sums to 1)."""
        busy: dict[str, float] = {}
        for s in self.slices:
            busy[s.guest] = busy.get(s.guest, 0.0) + (s.end - s.start)
        total = sum(busy.values())
        return {guest: (t / total if total else 0.0) for guest, t in sorted(busy.items())}

    def text(self) -> str:
        if not self.slices:
            return f"{self.title or 'scheduler trace'}: no slices yet"
        start = min(s.start for s in self.slices)
        end = max(s.end for s in self.slices)
        lines = [f"{self.title or 'scheduler trace'}: {len(self.slices)} slices over "
                 f"{end - start:g} {self.time_unit}"]
        for guest, share in self.shares().items():
            count = sum(1 for s in self.slices if s.guest == guest)
            lines.append(f"  {guest:<16} {share:6.1%} of busy time, {count} slices")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)
