"""Live VM exits per reason for a toy-VMM machine (or anything with ``exit_counts()``).

The chart is :func:`vlab.plots.exits_chart` in a :class:`~vlab.dashboards.chart.LiveChart`: bars per
reason, most frequent first, redrawn in place. Under the chart a line gives the
total and the exit rate since the previous redraw, the number students compare
with the instruction rate to see why exits are what virtualization costs.
"""

from __future__ import annotations

import html
import time

import ipywidgets as widgets
import plotly.graph_objects as go

from vlab.dashboards.chart import LiveChart
from vlab.dashboards.panel import DEFAULT_INTERVAL, Panel
from vlab.dashboards.protocols import ExitCounter
from vlab.plots import by_frequency, exits_chart

__all__ = ["ExitMonitor"]


class ExitMonitor(Panel):
    """Exits per reason, live.

    ::

        monitor = ExitMonitor(machine)   # machine.exit_counts() -> {"csr": 120, "wfi": 4, ...}
        monitor.start_updates()
        machine.run(...)                 # in a thread, or call monitor.refresh() between steps
        monitor.close()

    :param machine: see :class:`~vlab.dashboards.protocols.ExitCounter`.
    :param interval: minimum seconds between redraws.
    """

    def __init__(self, machine: ExitCounter, *, interval: float = DEFAULT_INTERVAL,
                 title: str = "VM exits by reason") -> None:
        super().__init__(interval=interval, title=title)
        self.machine = machine
        self.counts: dict[str, int] = {}
        self.rate = 0.0
        self._previous: tuple[float, int] | None = None
        self.chart = exits_chart({}, title=title)
        self.chart_view = LiveChart(self.chart, height=280)
        self.summary = widgets.HTML()
        self.widget.children = (self.chart_view.widget, self.summary, self.status)
        self.refresh(force=True)

    @property
    def total(self) -> int:
        """All exits counted so far."""
        return sum(self.counts.values())

    def _update(self) -> None:
        self.counts = dict(self.machine.exit_counts())
        now = time.monotonic()
        if self._previous is not None and now > self._previous[0]:
            self.rate = (self.total - self._previous[1]) / (now - self._previous[0])
        self._previous = (now, self.total)
        ordered = by_frequency(self.counts)
        with self.chart.batch_update():
            self.chart.data[0].x = [reason for reason, _ in ordered]
            self.chart.data[0].y = [count for _, count in ordered]
            self.chart.data[0].text = [str(count) for _, count in ordered]
        self.chart_view.draw()
        self.summary.value = html.escape(self._headline())

    def figure(self) -> go.Figure:
        return self.chart

    def _headline(self) -> str:
        return f"{self.total} exits, {self.rate:.0f}/s since the previous update"

    def text(self) -> str:
        ordered = by_frequency(self.counts)
        lines = [f"{self.title}: {self._headline()}"]
        lines.extend(f"  {reason:<16} {count}" for reason, count in ordered)
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)
