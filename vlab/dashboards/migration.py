"""Live progress of a pre-copy migration: bytes still to send after each round.

Feed it the dicts a poller builds from ``query-migrate`` — ``{"round": int,
"remaining": int, "transferred": int, "time": float}`` (``round`` is QEMU's
``dirty-sync-count``, ``time`` seconds since the start; an optional ``status``
such as ``"active"`` or ``"completed"`` is shown too) — either by calling
:meth:`MigrationView.add`, or by giving it a ``poll`` function that the live
updates call. One bar per round: of the polls within a round, the one with
the most still to send (the nearest to the round's start: ``remaining`` only
falls during a round), which is what the round had to copy; the headline shows
the latest poll.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from vlab.dashboards.chart import LiveChart
from vlab.dashboards.panel import DEFAULT_INTERVAL, Panel
from vlab.measure import format_bytes
from vlab.plots import migration_chart, migration_series

__all__ = ["MigrationView"]

Record = Mapping[str, Any]


class MigrationView(Panel):
    """Bytes remaining per pre-copy round, with the downtime budget and a model to compare.

    ::

        view = MigrationView(poll=lambda: migration_status(source_vm), threshold=budget_bytes)
        view.start_updates()
        ...                                   # migrate
        view.close()
        view.rounds                           # what was seen, for the student's model

    :param rounds: records already known.
    :param poll: a function returning the current record (or None), called on each redraw.
    :param threshold: bytes that fit in the downtime limit (the stop-and-copy line).
    :param predicted: a model's remaining bytes for rounds 1, 2, …
    """

    def __init__(self, rounds: Iterable[Record] = (), *, poll: Callable[[], Record | None] | None = None,
                 threshold: float | None = None, predicted: Sequence[float] | None = None,
                 title: str = "pre-copy: bytes remaining per round",
                 interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(interval=interval, title=title)
        self.poll = poll
        self.threshold = threshold
        self.predicted = predicted
        self.rounds: list[dict[str, Any]] = []
        #: the most recent poll (for the headline)
        self.latest: dict[str, Any] | None = None
        for record in rounds:
            self._merge(record)
        self.chart = self._figure()
        self.chart_view = LiveChart(self.chart, height=320)
        self.summary = widgets.HTML()
        self.widget.children = (self.chart_view.widget, self.summary, self.status)
        self.refresh(force=True)

    def add(self, record: Record) -> None:
        """Record one poll's result and redraw (throttled)."""
        self._merge(record)
        self.refresh()

    def _merge(self, record: Record) -> None:
        migration_series([record])  # validates the keys, naming a missing one
        entry = dict(record)
        with self._lock:  # add() and the polling thread may both merge
            self.latest = entry
            if self.rounds and self.rounds[-1]["round"] == entry["round"]:
                if float(entry["remaining"]) > float(self.rounds[-1]["remaining"]):
                    self.rounds[-1] = entry
            else:
                self.rounds.append(entry)

    def _figure(self) -> go.Figure:
        return migration_chart(self.rounds, threshold=self.threshold, predicted=self.predicted, title=self.title)

    def _update(self) -> None:
        if self.poll is not None:
            record = self.poll()
            if record is not None:
                self._merge(record)
        with self._lock:
            # rebuilt, not patched: the round axis, bar labels and model line all depend on the rounds seen
            self.chart = self._figure()
        self.chart_view.draw(self.chart)
        self.summary.value = html.escape(self._headline())

    def figure(self) -> go.Figure:
        return self.chart

    def _headline(self) -> str:
        last = self.latest
        if last is None:
            return "no round yet"
        status = f" ({last['status']})" if "status" in last else ""
        return (f"round {last['round']}{status}: {format_bytes(last['remaining'])} remaining, "
                f"{format_bytes(last['transferred'])} sent, {float(last['time']):.2f} s")

    def text(self) -> str:
        lines = [f"{self.title}: {self._headline()}"]
        lines.extend(f"  round {r['round']:>3}: {format_bytes(r['remaining']):>10} remaining"
                     for r in self.rounds[-8:])
        if self.threshold is not None:
            lines.append(f"  downtime budget: {format_bytes(self.threshold)}")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)
