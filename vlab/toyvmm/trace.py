"""The schedule as it happened: one :class:`vlab.plots.Slice` per time a vCPU held the CPU.

Deterministic by construction (virtual time, seeded schedulers): the same machine, programs and
seed give an equal :class:`Trace`. :func:`vlab.plots.gantt_chart` draws it (after :meth:`Trace.in_ms`
for a time axis in virtual ms).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

# the generic record of vlab.plots, so a trace is plot-ready without a second slice type
from vlab.plots import Slice
from vlab.toyvmm.sched import INSNS_PER_MS

__all__ = ["Trace"]


class Trace(list[Slice]):
    """A list of :class:`vlab.plots.Slice` (times in virtual instructions) with summaries.

    A vCPU's slice is on lane ``"<guest>/<vcpu>"`` (``"web/0"``); time when nothing was runnable is
    on lane ``"idle"``, with guest and reason ``"idle"``.
    """

    def add_run(self, guest: str, vcpu: int, start: int, end: int, reason: str) -> None:
        """Record that vCPU ``vcpu`` of ``guest`` ran from ``start`` to ``end``; ``reason`` is why it
        stopped: ``slice`` (used up), ``yield``, ``blocked``, ``preempted``, ``halted``, ``killed``, ``end``."""
        self.append(Slice(f"{guest}/{vcpu}", guest, start, end, reason))

    def add_idle(self, start: int, end: int) -> None:
        """Record that nothing was runnable from ``start`` to ``end``."""
        self.append(Slice("idle", "idle", start, end, "idle"))

    def busy_time(self) -> dict[str, float]:
        """Instructions of CPU time per guest (idle excluded)."""
        totals: defaultdict[str, float] = defaultdict(int)  # int: instructions stay whole numbers
        for s in self:
            if s.guest != "idle":
                totals[s.guest] += s.end - s.start
        return dict(totals)

    def shares(self) -> dict[str, float]:
        """Fraction of the busy CPU time each guest received."""
        busy = self.busy_time()
        total = sum(busy.values()) or 1
        return {guest: t / total for guest, t in busy.items()}

    def in_ms(self) -> list[Slice]:
        """The slices with times in virtual milliseconds (for ``gantt_chart(..., time_unit="virtual ms")``)."""
        return [replace(s, start=s.start / INSNS_PER_MS, end=s.end / INSNS_PER_MS) for s in self]
