"""Plotly figures for the labs, and a :func:`show` that also works where no browser is.

Every builder takes plain data (the types of :mod:`vlab.measure`, mappings,
lists of records) and returns a :class:`plotly.graph_objects.Figure`:

* :func:`bar_chart`, :func:`grouped_bar_chart` — medians or ratios with their confidence intervals
  as error bars;
* :func:`distribution_chart` — every observation of a sample, to show what noise looks like;
* :func:`gantt_chart` — who ran where and when, from a scheduler trace of :class:`SliceLike` records;
* :func:`exits_chart` — VM exits per reason;
* :func:`migration_chart` — bytes still to send after each pre-copy round;
* :func:`line_chart` — time series (host CPU, RSS, …).

:func:`show` displays a figure in a notebook and prints :func:`summarize`'s
plain text elsewhere (terminals, CI, ``VLAB_PLAIN=1``), so a lab's output is
readable in a log too. Only ``plotly.graph_objects`` is used: plotly express
would pull in pandas, which vlab does not depend on.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import plotly.graph_objects as go

from vlab.errors import VlabError
from vlab.measure import Estimate, Sample, format_bytes, format_value, unit_scale
from vlab.progress import display_mode

__all__ = [
    "MIGRATION_KEYS",
    "Slice",
    "SliceLike",
    "bar_chart",
    "by_frequency",
    "distribution_chart",
    "exits_chart",
    "gantt_chart",
    "gantt_series",
    "grouped_bar_chart",
    "line_chart",
    "migration_chart",
    "migration_series",
    "mimebundle",
    "round_axis",
    "show",
    "summarize",
]

TEMPLATE = "plotly_white"
#: keys each round of a migration record must have (see :func:`migration_chart`)
MIGRATION_KEYS = ("round", "remaining", "transferred", "time")
#: items listed per trace in a plain-text summary before "… and N more"
SUMMARY_ITEMS = 8


@runtime_checkable
class SliceLike(Protocol):
    """One slice of a scheduler trace: *guest* ran on *lane* from *start* to *end*.

    Any object with these attributes fits (a dataclass, a namedtuple, a student's
    own record); :class:`Slice` is the one vlab records (:class:`vlab.toyvmm.Trace`).

    * ``lane`` — where it ran: a vCPU as ``"<guest>/<vcpu>"`` (``"web/0"``), or a pCPU index or name
      (``0``, ``"pCPU1"``).
    * ``guest`` — what the bar's colour stands for: the guest's name (or a vCPU's, ``"web/0"``, to tell a
      guest's vCPUs apart).
    * ``start``, ``end`` — times in one unit for the whole trace (seconds or ticks), ``end >= start``.
    * ``reason`` — why the slice ended: ``"preempt"``, ``"yield"``, ``"block"``, ``"exit:wfi"``, ….
    """

    @property
    def lane(self) -> int | str: ...

    @property
    def guest(self) -> str: ...

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class Slice:
    """A ready-made :class:`SliceLike` record: the slice type of every vlab scheduler trace."""

    lane: int | str
    guest: str
    start: float
    end: float
    reason: str = ""


def _figure(title: str, xaxis: str, yaxis: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title or None, template=TEMPLATE, xaxis_title=xaxis or None,
                      yaxis_title=yaxis or None, margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
                      **layout)
    return fig


# ---------------------------------------------------------------- bars with intervals


def bar_chart(
    values: Mapping[str, Sample | Estimate | float],
    *,
    title: str = "",
    yaxis: str = "",
    level: float = 0.95,
    seed: int = 0,
) -> go.Figure:
    """Bars for medians (of :class:`Sample`) or estimates, with their confidence intervals.

    ::

        fig = bar_chart({"native": native, "toy VMM": toy, "QEMU TCG": tcg}, title="compute loop")
        fig = bar_chart({"toy/native": ratio(toy, native)}, yaxis="slowdown (×)")

    Samples in seconds or bytes share one scaled unit (ms, MiB, …) named on the y axis.

    :param values: label → a Sample (its median and CI), an Estimate, or a bare number (no error bar).
    :param level: confidence level for Samples.
    :param seed: bootstrap seed for Samples.
    """
    estimates = {label: _as_estimate(v, level, seed) for label, v in values.items()}
    factor, unit = _common_scale(estimates.values())
    fig = _figure(title, "", _axis_title(yaxis, unit))
    _add_estimate_bars(fig, estimates, factor, name=yaxis or "value")
    return fig


def grouped_bar_chart(
    groups: Mapping[str, Mapping[str, Sample | Estimate | float]],
    *,
    title: str = "",
    yaxis: str = "",
    level: float = 0.95,
    seed: int = 0,
) -> go.Figure:
    """Bars side by side within each group, one colour per series, with confidence intervals.

    ::

        fig = grouped_bar_chart({"compute": {"toy VMM": r1, "QEMU TCG": r2},
                                 "syscalls": {"toy VMM": r3, "QEMU TCG": r4}}, yaxis="slowdown (×)")

    :param groups: group (x category) → series name → a Sample, an Estimate or a number, as for :func:`bar_chart`.
    """
    table = {group: {series: _as_estimate(v, level, seed) for series, v in row.items()}
             for group, row in groups.items()}
    factor, unit = _common_scale(e for row in table.values() for e in row.values())
    fig = _figure(title, "", _axis_title(yaxis, unit), barmode="group")
    series_names = list(dict.fromkeys(series for row in table.values() for series in row))
    for series in series_names:
        column = {group: row[series] for group, row in table.items() if series in row}
        _add_estimate_bars(fig, column, factor, name=series)
    return fig


def distribution_chart(samples: Mapping[str, Sample], *, title: str = "", yaxis: str = "") -> go.Figure:
    """Every observation of each sample as a point over its box plot: what noise looks like.

    ::

        fig = distribution_chart({"native": native, "QEMU TCG": tcg}, yaxis="time")
    """
    factor, unit = _common_scale(Estimate(s.median, s.median, s.median, 0.95, (s.n,), s.unit, "none")
                                 for s in samples.values())
    fig = _figure(title, "", _axis_title(yaxis, unit), showlegend=False)
    for label, sample in samples.items():
        fig.add_box(y=[v * factor for v in sample.values], name=label, boxpoints="all", jitter=0.4,
                    pointpos=0, boxmean=False)
    return fig


def _add_estimate_bars(fig: go.Figure, estimates: Mapping[str, Estimate], factor: float, name: str) -> None:
    fig.add_bar(
        x=list(estimates),
        y=[e.value * factor for e in estimates.values()],
        error_y={
            "type": "data", "symmetric": False,
            "array": [(e.high - e.value) * factor for e in estimates.values()],
            "arrayminus": [(e.value - e.low) * factor for e in estimates.values()],
        },
        hovertext=[_bar_text(e) for e in estimates.values()],
        hoverinfo="x+text",
        name=name,
    )


def _bar_text(estimate: Estimate) -> str:
    return format_value(estimate.value, estimate.unit) if estimate.method == "none" else str(estimate)


def _as_estimate(value: Sample | Estimate | float, level: float, seed: int) -> Estimate:
    """An Estimate for every kind of bar; method "none" marks a bare value without an interval."""
    if isinstance(value, Estimate):
        return value
    if isinstance(value, Sample) and value.n >= 2:
        return value.estimate(level, seed=seed)
    if isinstance(value, Sample):
        return Estimate(value.median, value.median, value.median, level, (1,), value.unit, "none")
    return Estimate(float(value), float(value), float(value), level, (1,), "", "none")


def _common_scale(estimates: Iterable[Estimate]) -> tuple[float, str]:
    """One display unit for all bars: the one that suits the largest value."""
    known = list(estimates)
    if not known:
        return 1.0, ""
    units = {e.unit for e in known}
    if len(units) != 1:
        return 1.0, ""
    return unit_scale(max(abs(e.value) for e in known), units.pop())


def _axis_title(title: str, unit: str) -> str:
    if not unit or unit in title:
        return title
    return f"{title} ({unit})" if title else unit


# ---------------------------------------------------------------- scheduler trace


def gantt_chart(
    trace: Iterable[SliceLike],
    *,
    title: str = "",
    time_unit: str = "s",
) -> go.Figure:
    """A Gantt chart of a scheduler trace: one row per lane, one colour per guest.

    ::

        fig = gantt_chart(scheduler.trace, title="credit scheduler, seed 42")

    :param trace: :class:`SliceLike` records (any order).
    :param time_unit: the unit of ``start``/``end``, for the axis title.
    :raises VlabError: for a slice that ends before it starts.
    """
    lanes, bars = gantt_series(trace, time_unit)
    fig = _figure(title, f"time ({time_unit})", "", barmode="overlay", bargap=0.3,
                  legend_title_text="guest")
    for bar in bars:
        fig.add_bar(orientation="h", hoverinfo="text", **bar)
    # lanes are categories even when they look like numbers ("0", "1")
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=lanes, autorange="reversed",
                     title_text="lane")
    return fig


def gantt_series(trace: Iterable[SliceLike], time_unit: str = "s") -> tuple[list[str], list[dict[str, Any]]]:
    """The data of :func:`gantt_chart` without the figure (live panels update traces in place).

    :return: the lane names in display order, and per guest the bar properties
        ``name``, ``y`` (lanes), ``base`` (starts), ``x`` (durations) and ``hovertext``.
    :raises VlabError: for a slice that ends before it starts.
    """
    slices = list(trace)
    for s in slices:
        if s.end < s.start:
            raise VlabError("a trace slice ends before it starts", field="trace", value=s,
                            fix="record end >= start for every slice")
    bars = []
    for guest in _ordered({s.guest: s.guest for s in slices}):
        mine = [s for s in slices if s.guest == guest]
        bars.append({
            "name": guest,
            "y": [str(s.lane) for s in mine],
            "base": [s.start for s in mine],
            "x": [s.end - s.start for s in mine],
            "hovertext": [f"{guest} on {s.lane}: {s.start:g}–{s.end:g} {time_unit} ({s.reason or 'ran'})"
                          for s in mine],
        })
    return _ordered({str(s.lane): s.lane for s in slices}), bars


def _ordered(keys: Mapping[str, Any]) -> list[str]:
    """Names in natural order: numeric lanes by number, then the rest alphabetically."""
    def key(name: str) -> tuple[bool, int, str]:
        value = keys[name]
        return (not isinstance(value, int), value if isinstance(value, int) else 0, name)

    return sorted(keys, key=key)


# ---------------------------------------------------------------- exits, migration, series


def by_frequency(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(reason, count)`` pairs, most frequent first (ties alphabetically): the order of :func:`exits_chart`."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def exits_chart(counts: Mapping[str, int], *, title: str = "VM exits by reason") -> go.Figure:
    """Exits per reason, most frequent first.

    ::

        fig = exits_chart(machine.exit_counts())
    """
    ordered = by_frequency(counts)
    fig = _figure(title, "reason", "exits")
    fig.add_bar(x=[reason for reason, _ in ordered], y=[n for _, n in ordered], name="exits",
                text=[str(n) for _, n in ordered], textposition="auto")
    return fig


def migration_chart(
    rounds: Sequence[Mapping[str, float]],
    *,
    threshold: float | None = None,
    predicted: Sequence[float] | None = None,
    title: str = "pre-copy: bytes remaining per round",
) -> go.Figure:
    """Bytes still to send after each pre-copy round, in MiB.

    ::

        fig = migration_chart(polls, threshold=bandwidth * downtime_limit, predicted=model(rates))

    :param rounds: one dict per round, e.g. from polling ``query-migrate``:
        ``{"round": 1, "remaining": 123456, "transferred": 987654, "time": 0.42}``
        (``round`` is QEMU's dirty-sync count; ``time`` seconds since the start).
    :param threshold: bytes that can be sent within the downtime limit: the stop-and-copy line.
    :param predicted: a model's remaining bytes for rounds 1, 2, …, drawn as a line to compare.
    """
    mib = 2.0**-20
    fig = _figure(title, "round", "remaining (MiB)")
    measured = migration_series(rounds)
    # labels above the bars, so a round that ended with nothing left still shows ("0 B")
    fig.add_bar(name="measured", hoverinfo="text", text=[format_bytes(y / mib) for y in measured["y"]],
                textposition="outside", cliponaxis=False, **measured)
    if predicted is not None:
        fig.add_scatter(x=list(range(1, len(predicted) + 1)), y=[p * mib for p in predicted],
                        mode="lines+markers", name="model")
    if threshold is not None:
        fig.add_hline(y=threshold * mib, line_dash="dash", annotation_text="fits the downtime budget")
    last = max([*measured["x"], len(predicted or ()), 1])
    round_axis(fig, last)
    return fig


def round_axis(fig: go.Figure, last: int) -> None:
    """Whole-numbered round ticks from 1 to *last* (plotly's automatic ticks would include 1.5, 2.5, …)."""
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=max(1, math.ceil(last / 15)), tickformat="d",
                     range=[0.4, last + 0.6])


def migration_series(rounds: Sequence[Mapping[str, float]]) -> dict[str, list[Any]]:
    """The measured bars of :func:`migration_chart` without the figure: ``x`` (rounds),
    ``y`` (remaining MiB) and ``hovertext``.

    :raises VlabError: for a round without one of :data:`MIGRATION_KEYS`.
    """
    records = [_migration_record(r, i) for i, r in enumerate(rounds)]
    return {
        "x": [r["round"] for r in records],
        "y": [r["remaining"] * 2.0**-20 for r in records],
        "hovertext": [f"{format_bytes(r['remaining'])} left, {format_bytes(r['transferred'])} sent, "
                      f"t={r['time']:.2f} s" for r in records],
    }


def _migration_record(record: Mapping[str, float], index: int) -> dict[str, float]:
    missing = [k for k in MIGRATION_KEYS if k not in record]
    if missing:
        raise VlabError(f"migration round {index} lacks {', '.join(missing)}", field="rounds",
                        value=dict(record), fix=f"give every round the keys {', '.join(MIGRATION_KEYS)}")
    converted = {k: float(record[k]) for k in MIGRATION_KEYS}
    converted["round"] = int(record["round"])
    return converted


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    xaxis: str = "time (s)",
    yaxis: str = "",
) -> go.Figure:
    """One line per named series of ``(x, y)`` points.

    ::

        fig = line_chart({"vCPU 0": [(0.0, 0.0), (0.5, 0.41)], "vCPU 1": [(0.0, 0.0), (0.5, 0.12)]},
                         yaxis="host CPU (s)")
    """
    fig = _figure(title, xaxis, yaxis)
    for name, points in series.items():
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=name)
    return fig


# ---------------------------------------------------------------- display


def show(fig: go.Figure) -> None:
    """Display *fig*: interactively in a notebook, as a plain-text summary elsewhere.

    Plain text is used when :func:`vlab.progress.display_mode` is not
    ``"notebook"``: in terminals, in CI logs and whenever ``VLAB_PLAIN=1``. In a
    notebook the plotly MIME bundle is displayed directly, with the summary as
    its ``text/plain`` part: ``fig.show()`` would first load plotly's renderer
    machinery, about 5 s in a fresh kernel.
    """
    if display_mode() != "notebook":
        print(summarize(fig))
        return
    import IPython.display

    display: Any = IPython.display.display  # IPython is untyped
    display(mimebundle(fig), raw=True)


def mimebundle(fig: go.Figure) -> dict[str, Any]:
    """*fig* as a notebook output: plotly's MIME type (drawn by JupyterLab's plotly renderer, which loads
    plotly.js once per page, so a saved notebook holds only the figure's JSON) plus :func:`summarize`'s text."""
    # to_json's encoder turns whatever the traces hold (tuples, dates, numpy) into plain JSON.
    return {"application/vnd.plotly.v1+json": json.loads(fig.to_json()), "text/plain": summarize(fig)}


def summarize(fig: go.Figure) -> str:
    """A short plain-text description of *fig*: its title, then one line per trace."""
    axes = [f"{axis[0]}: {fig.layout[axis].title.text}" for axis in ("xaxis", "yaxis")
            if fig.layout[axis].title.text]
    title = fig.layout.title.text or "figure"
    lines = [f"{title} ({', '.join(axes)})" if axes else title]
    for trace in fig.data:
        lines.append("  " + _describe_trace(trace))
    for shape in fig.layout.shapes or ():
        if shape.type == "line" and shape.y0 == shape.y1:
            lines.append(f"  horizontal line at y={shape.y0:.4g}")
    return "\n".join(lines)


def _describe_trace(trace: Any) -> str:
    name = trace.name or trace.type
    if trace.type == "bar" and trace.orientation == "h":
        return _describe_gantt_trace(name, trace)
    xs, ys = list(trace.x or ()), list(trace.y or ())
    if trace.type == "box":
        return (f"{name}: {len(ys)} observations, median {_number(statistics.median(ys))}, "
                f"range {_number(min(ys))}..{_number(max(ys))}") if ys else f"{name}: no observations"
    if trace.type == "bar" and trace.hovertext is not None and len(trace.hovertext) == len(xs):
        described = [f"{x}: {text}" for x, text in zip(xs, trace.hovertext, strict=True)]
        return f"{name}: " + _elide(described, "; ")
    if trace.type == "bar":
        return f"{name}: " + _elide([f"{x}={_number(y)}" for x, y in zip(xs, ys, strict=False)], ", ")
    if not ys:
        return f"{name}: no points"
    return (f"{name}: {len(ys)} points, x {_number(xs[0])}..{_number(xs[-1])}, "
            f"y {_number(min(ys))}..{_number(max(ys))}, last {_number(ys[-1])}")


def _describe_gantt_trace(name: str, trace: Any) -> str:
    durations = list(trace.x or ())
    lanes = sorted(set(trace.y or ()))
    return (f"{name}: {len(durations)} slices, busy {_number(sum(durations))} on lanes "
            f"{', '.join(str(lane) for lane in lanes)}")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _elide(items: list[str], separator: str) -> str:
    if len(items) <= SUMMARY_ITEMS:
        return separator.join(items)
    return separator.join(items[:SUMMARY_ITEMS]) + f"{separator}… and {len(items) - SUMMARY_ITEMS} more"
