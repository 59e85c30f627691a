"""The schedule as it happened: one :class:`Slice` per time a vCPU held the CPU.

Deterministic by construction (virtual time, seeded schedulers): the same machine, programs and
seed give an equal :class:`Trace`. :meth:`Trace.gantt` draws it with plotly.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

from vlab.toyvmm.sched import INSNS_PER_MS

__all__ = ["Slice", "Trace"]


class Slice(NamedTuple):
    """``guest``/``vcpu`` ran from ``start`` to ``end`` (virtual instructions); ``reason`` is why
    it stopped: ``slice`` (used up), ``yield``, ``blocked``, ``preempted``, ``halted``, ``killed``,
    ``end`` (the run ended); ``idle`` slices have guest ``"idle"``."""

    start: int
    end: int
    guest: str
    vcpu: int
    reason: str

    @property
    def lane(self) -> str:
        """The Gantt-chart row (one per guest vCPU), as :class:`vlab.plots.SliceLike` expects."""
        return f"{self.guest}/v{self.vcpu}"


class Trace(list[Slice]):
    """A list of :class:`Slice` with summaries."""

    def busy_time(self) -> dict[str, int]:
        """Instructions of CPU time per guest (idle excluded)."""
        totals: dict[str, int] = defaultdict(int)
        for s in self:
            if s.guest != "idle":
                totals[s.guest] += s.end - s.start
        return dict(totals)

    def shares(self) -> dict[str, float]:
        """Fraction of the busy CPU time each guest received."""
        busy = self.busy_time()
        total = sum(busy.values()) or 1
        return {guest: t / total for guest, t in busy.items()}

    def gantt(self, title: str = "vCPU schedule (virtual ms)") -> Any:
        """A plotly figure: one row per vCPU, one bar per slice, colour = why it stopped."""
        import plotly.graph_objects as go

        fig = go.Figure()
        by_reason: dict[str, list[Slice]] = defaultdict(list)
        for s in self:
            by_reason[s.reason].append(s)
        for reason, slices in sorted(by_reason.items()):
            fig.add_trace(go.Bar(
                name=reason, orientation="h",
                y=[f"{s.guest}/{s.vcpu}" for s in slices],
                x=[(s.end - s.start) / INSNS_PER_MS for s in slices],
                base=[s.start / INSNS_PER_MS for s in slices],
            ))
        fig.update_layout(barmode="overlay", title=title, xaxis_title="virtual time (ms)")
        return fig
