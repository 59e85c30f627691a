"""A control panel for one VM: buttons, state, host CPU per vCPU and QEMU's RSS, the serial console.

Layout (top to bottom): a title line with the state, the Start / Pause /
Resume / Stop buttons, a message line for refused actions, a chart (top row: host
CPU % per vCPU thread on the left axis, QEMU RSS in MiB on the right; bottom row:
how many seconds the guest's clock has fallen behind real time; paused and
booting stretches shaded) and the labelled tail of the serial console. The
chart plots utilisation — the growth of each vCPU thread's CPU seconds between
two samples, divided by the time between them — which is what ``top`` shows for
those threads. An idle guest costs a few percent whether it runs or not, so the
host side cannot show a pause; the guest's side does: its clock stops while it
is paused (``vlab.VM`` reads the RTC, which follows the VM's clock), and the
bottom line steps up by the length of the pause.

Threads: a button's action (``vm.stop()`` may take seconds) runs on a worker
thread, never in the button callback, and while it runs every button is
disabled and the state reads e.g. ``stopping``. Reads of the VM (state, vCPU
times, RSS, console) happen outside the panel's lock and are waited for at most
:attr:`VMPanel.read_wait` seconds: a VM whose lock a long operation holds shows
as busy instead of stalling the panel.
"""

from __future__ import annotations

import contextlib
import functools
import html
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from vlab.dashboards.chart import LiveChart
from vlab.dashboards.panel import Panel, error_html, error_of
from vlab.dashboards.protocols import (
    ACTIVE_STATES,
    CONSOLE_STATES,
    SAMPLED_STATES,
    ClockedVM,
    ControllableVM,
    state_name,
)
from vlab.errors import StateError, VlabError
from vlab.measure import format_bytes

__all__ = ["ACTIONS", "ENABLED_IN", "VMPanel"]

ACTIONS = ("start", "pause", "resume", "stop")
#: the states in which each button is enabled; in a state not listed here at all, every button is.
#: A stopped or failed VM cannot start again (``vlab.VM`` wants a new VM), so Start is for ``created`` only.
ENABLED_IN: Mapping[str, frozenset[str]] = {
    "start": frozenset({"created"}),
    "pause": frozenset({"running"}),
    "resume": frozenset({"paused"}),
    "stop": frozenset({"starting", "running", "paused"}),
}
_KNOWN_STATES = frozenset().union(*ENABLED_IN.values(), {"stopping", "stopped", "failed"})
#: what the state line says while an action runs
_IN_PROGRESS = {"start": "starting", "pause": "pausing", "resume": "resuming", "stop": "stopping"}
#: stretches of the chart shaded by state, with their label and colour
_SHADED = {"paused": ("paused", "rgba(255,165,0,0.25)"), "starting": ("booting", "rgba(100,149,237,0.15)")}
MIB = 2.0**-20
#: points per trace the browser is asked to draw (older samples are thinned out, the newest always kept)
MAX_DRAWN = 240
#: traces get markers while they have at most this many points
MARKERS_UP_TO = 120
#: pixels: two rows (host cost, guest clock) on one time axis
CHART_HEIGHT = 340
#: seconds over which the guest-clock line takes its floor: the RTC's resolution (1 s) and a sample period more
LAG_WINDOW = 1.25


@dataclass(frozen=True)
class _Reading:
    """One read of the VM; metrics are None when the VM has no QEMU process (or it is not up yet)."""

    time: float
    state: str
    vcpu_seconds: Mapping[int, float] | None
    rss: int | None
    console: str | None
    guest_clock: float | None = None


@dataclass(frozen=True)
class _HostSample:
    time: float
    vcpu_seconds: Mapping[int, float]
    rss: int
    guest_clock: float | None = None  # the guest's clock, if the VM is a ClockedVM


class VMPanel(Panel):
    """Start, pause, resume and stop a VM and watch what it costs the host.

    ::

        panel = VMPanel(vm)        # any object satisfying ControllableVM
        panel                      # shows the widget (or its text in a terminal)
        panel.start_updates()      # live: sample every 0.25 s from a background thread, redraw every 1 s
        ...
        panel.close()              # stops the updates; the VM itself is left as it is

    :param vm: the VM (see :class:`~vlab.dashboards.protocols.ControllableVM`).
    :param interval: minimum seconds between redraws (each one re-renders the chart in the browser: once a
        second stays cheap on a busy 2-core Binder); samples are taken every ``min(interval, 0.25)`` s.
    :param history: how many samples the chart keeps (480: the last two minutes).
    :param console_lines: how many console lines to show.
    """

    #: seconds a redraw waits for a read of the VM before showing it as busy
    read_wait = 0.5
    #: live updates sample at least this often, whatever the redraw interval: a chart needs points to read
    max_sample_period = 0.25

    def __init__(self, vm: ControllableVM, *, interval: float = 1.0, history: int = 480,
                 console_lines: int = 12) -> None:
        super().__init__(interval=interval, title=str(getattr(vm, "name", "") or "VM"))
        if not isinstance(history, int) or isinstance(history, bool) or not 2 <= history <= 100_000:
            raise VlabError("must be a whole number of samples from 2 to 100000", field="history", value=history,
                            fix="keep the default (480: two minutes)")
        self.vm = vm
        self.console_lines = console_lines
        self.samples: deque[_HostSample] = deque(maxlen=history)
        self.timeline: deque[tuple[float, str]] = deque(maxlen=history * 2)
        self.state = state_name(vm.state)
        self.console = ""
        self.action_error: str | None = None
        #: the action running on the worker thread, if any
        self.running_action: str | None = None
        #: True while a read of the VM has not come back within read_wait (a long VM operation holds it)
        self.vm_busy = False
        self._t0 = time.monotonic()
        self._vcpu_traces: dict[int, int] = {}
        self._worker: threading.Thread | None = None
        self._reader: tuple[threading.Thread | None, dict[str, Any]] = (None, {})
        self._reader_lock = threading.Lock()
        self.heading = widgets.HTML()
        self.buttons = {name: widgets.Button(description=name.capitalize(), tooltip=f"vm.{name}()")
                        for name in ACTIONS}
        for name, button in self.buttons.items():
            button.on_click(functools.partial(_click, weakref.ref(self), name))
        self.message = widgets.HTML()
        self.chart = _empty_chart()
        self.chart_view = LiveChart(self.chart, height=CHART_HEIGHT)
        self.console_view = widgets.HTML()
        self.widget.children = (self.heading, widgets.HBox(list(self.buttons.values())), self.message,
                                self.status, self.chart_view.widget, self.console_view)
        self.refresh(force=True)

    # -- actions

    def act(self, action: str, wait: bool = True) -> None:
        """Run ``vm.<action>()`` on the worker thread (what a button click does, with ``wait=False``).

        A refusal (the VM's error, or another action still running) is shown next to the buttons, not raised.

        :param wait: return only once the action has finished.
        """
        if action not in ACTIONS:
            raise VlabError("unknown action", field="action", value=action, fix=f"one of {', '.join(ACTIONS)}")
        with self._lock:
            if self.running_action is not None:
                self._refuse(f"{action}: wait, {self.running_action} is still running")
                return
            self.running_action = action
            self.message.value = ""
            self._worker = threading.Thread(target=self._run_action, args=(action,), daemon=True,
                                            name=f"vlab-VMPanel-{action}")
            self._worker.start()
        if not self.closed:
            self.redraw()  # the click shows at once: "stopping", every button disabled
        if wait:
            self.wait_idle()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no action runs; whether that happened within *timeout* seconds."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return self.running_action is None

    def _run_action(self, action: str) -> None:
        try:
            getattr(self.vm, action)()
            error = None
        except Exception as exc:  # shown to the student next to the buttons; the panel stays usable
            reason = str(exc)
            error = reason if reason.startswith(action) else f"{action}: {reason}"
        with self._lock:
            self.running_action = None
            self.action_error = error
            self.message.value = error_html(error) if error else ""
        with contextlib.suppress(StateError):  # the panel may have been closed while the action ran
            self.refresh(force=True)

    def _refuse(self, reason: str) -> None:
        self.action_error = reason
        self.message.value = error_html(reason)

    # -- reading (outside the panel's lock, bounded)

    @property
    def sample_period(self) -> float:
        return min(self.interval, self.max_sample_period)

    def _tick(self) -> None:
        """Sample every :attr:`sample_period`; redraw (what the browser has to render) every ``interval``."""
        if time.monotonic() - self._last_refresh >= self.interval:
            self.refresh(force=True)
            return
        self._require_open("sample")
        failed = error_of(self._read)
        if failed:  # shown at the next redraw; a good read does not clear it before then
            self.error = failed

    def _read(self) -> None:
        with self._reader_lock:  # the sampler and an action's final refresh may both read
            reader, box = self._reader
            if reader is None or not reader.is_alive():  # at most one read in flight, however long it blocks
                box = {}
                reader = threading.Thread(target=self._read_vm, args=(box,), daemon=True, name="vlab-VMPanel-read")
                self._reader = (reader, box)
                reader.start()
        reader.join(self.read_wait)
        self.vm_busy = reader.is_alive()
        if self.vm_busy:
            return
        if "error" in box:
            raise box["error"]
        with self._lock:
            self._store(box["reading"])

    def _read_vm(self, box: dict[str, Any]) -> None:
        try:
            box["reading"] = self._read_now()
        except Exception as exc:  # handed to _read, which shows it
            box["error"] = exc

    def _read_now(self) -> _Reading:
        state = state_name(self.vm.state)
        vcpus: dict[int, float] | None = None
        rss: int | None = None
        console: str | None = None
        clock: float | None = None
        try:
            if state in SAMPLED_STATES:
                vcpus, rss = dict(self.vm.vcpu_times()), int(self.vm.rss_bytes())
            if state in ACTIVE_STATES and isinstance(self.vm, ClockedVM):
                clock = float(self.vm.guest_clock())
            if state in CONSOLE_STATES:
                console = self.vm.console_tail(self.console_lines)
        except Exception:
            if state != "starting":
                raise
            # booting: QEMU's process or QMP may not be up yet; the next sample will have it
        return _Reading(time.monotonic() - self._t0, state, vcpus, rss, console, clock)

    def _store(self, reading: _Reading) -> None:
        self.state = reading.state
        self.timeline.append((reading.time, reading.state))
        if reading.console is not None:  # afterwards the last lines read stay on show
            self.console = reading.console
        if reading.vcpu_seconds is not None and reading.rss is not None:
            self.samples.append(_HostSample(reading.time, reading.vcpu_seconds, reading.rss, reading.guest_clock))

    # -- drawing (under the panel's lock)

    def _update(self) -> None:
        self._show_state()
        self._show_console()
        self._draw_chart()

    @property
    def shown_state(self) -> str:
        """The state the panel shows: the VM's, or what a running action is doing (``stopping``)."""
        return _IN_PROGRESS[self.running_action] if self.running_action else self.state

    def enabled_actions(self) -> list[str]:
        """The actions whose buttons are enabled now."""
        return [name for name, button in self.buttons.items() if not button.disabled]

    def _show_state(self) -> None:
        shown = self.shown_state
        note = ""
        if self.running_action:
            note = f" <i>(vm.{self.running_action}() running…)</i>"
        elif self.vm_busy:
            note = " <i>(waiting for the VM: another operation holds it)</i>"
        self.heading.value = (f"<b>{html.escape(self.title)}</b> — state: <code>{html.escape(shown)}</code>"
                              f"{note}")
        for name, button in self.buttons.items():
            button.disabled = bool(self.running_action) or (
                shown in _KNOWN_STATES and shown not in ENABLED_IN[name])

    def _show_console(self) -> None:
        lines = self.console.rstrip("\n").splitlines()[-self.console_lines:]
        live = self.state in CONSOLE_STATES
        where = "live" if live else "the last lines read before the VM stopped"
        label = (f"<div style='font-weight:bold;margin-top:4px'>Serial console of {html.escape(self.title)} "
                 f"<span style='font-weight:normal;color:#555'>(ttyS0, last {self.console_lines} lines, "
                 f"{where})</span></div>")
        body = html.escape("\n".join(lines), quote=False) if lines else "(no output yet)"
        self.console_view.value = (f"{label}<pre style='margin:0;padding:4px 6px;background:#f6f6f6;"
                                   f"border:1px solid #ddd;max-height:14em;overflow:auto'>{body}</pre>")

    def _draw_chart(self) -> None:
        # The browser re-renders the whole chart at each redraw: draw at most MAX_DRAWN points per trace, with
        # markers only while there are few (they are what makes 2 points visible; at 200 they are just cost).
        utilisation = {index: thin(points) for index, points in self.vcpu_utilisation().items()}
        memory = thin([(s.time, s.rss * MIB) for s in self.samples])
        lag = thin(self.guest_lag())
        mode = "lines+markers" if len(memory) <= MARKERS_UP_TO else "lines"
        with self.chart.batch_update():
            self.chart.data[0].x = [t for t, _ in memory]
            self.chart.data[0].y = [m for _, m in memory]
            self.chart.data[1].x = [t for t, _ in lag]
            self.chart.data[1].y = [s for _, s in lag]
            for index, points in utilisation.items():
                if index not in self._vcpu_traces:
                    self.chart.add_scatter(name=f"vCPU {index} host CPU", x=[], y=[])
                    self._vcpu_traces[index] = len(self.chart.data) - 1
                trace = self.chart.data[self._vcpu_traces[index]]
                trace.x = [t for t, _ in points]
                trace.y = [u for _, u in points]
            for trace in self.chart.data:
                trace.mode = mode
            shapes, notes = [], []
            for state, start, end in self.stretches():
                label, colour = _SHADED[state]
                shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": start, "x1": end, "y0": 0,
                               "y1": 1, "fillcolor": colour, "line": {"width": 0}, "layer": "below"})
                notes.append({"x": (start + end) / 2, "y": 1, "xref": "x", "yref": "paper", "text": label,
                              "showarrow": False, "yanchor": "bottom"})
            self.chart.layout.shapes = shapes
            self.chart.layout.annotations = notes
        self.chart_view.draw()

    def stretches(self) -> list[tuple[str, float, float]]:
        """``(state, start, end)`` of each paused or booting stretch seen, in seconds on the chart's axis."""
        found: list[tuple[str, float, float]] = []
        timeline = list(self.timeline)
        for (t, state), following in itertools.zip_longest(timeline, timeline[1:]):
            if state not in _SHADED:
                continue
            end = following[0] if following is not None else t
            if found and found[-1][0] == state and found[-1][2] == t:
                found[-1] = (state, found[-1][1], end)
            else:
                found.append((state, t, end))
        return found

    def vcpu_utilisation(self) -> dict[int, list[tuple[float, float]]]:
        """Per vCPU, ``(time, host CPU %)`` between consecutive samples (100 % = one host core)."""
        with self._lock:  # the reading side appends to the deque
            samples = list(self.samples)
        series: dict[int, list[tuple[float, float]]] = {}
        for before, after in itertools.pairwise(samples):
            elapsed = after.time - before.time
            for index, seconds in after.vcpu_seconds.items():
                if index in before.vcpu_seconds and elapsed > 0:
                    used = max(0.0, seconds - before.vcpu_seconds[index])  # a restarted VM starts again at 0
                    series.setdefault(index, []).append((after.time, 100 * used / elapsed))
        return series

    def guest_lag(self) -> list[tuple[float, float]]:
        """``(time, seconds)`` the guest's clock has fallen behind real time since the first sample that had one:
        flat while the guest runs, rising by the length of each pause (empty unless the VM is a ClockedVM).

        A guest clock read in whole seconds (QEMU's RTC) makes the raw difference a 1-second sawtooth; each
        point is the smallest difference of the last :data:`LAG_WINDOW` seconds, the sawtooth's floor, so a
        running guest draws a flat line and a pause a step (seen up to a window late)."""
        with self._lock:
            clocked = [(s.time, s.guest_clock) for s in self.samples if s.guest_clock is not None]
        if not clocked:
            return []
        t0, g0 = clocked[0]
        raw = [(t, (t - t0) - (g - g0)) for t, g in clocked]
        floor, first = [], 0
        for i, (t, _) in enumerate(raw):
            while raw[first][0] < t - LAG_WINDOW:
                first += 1
            floor.append((t, min(lag for _, lag in raw[first:i + 1])))
        return floor

    def figure(self) -> go.Figure:
        final = go.Figure(self.chart)
        final.update_layout(title={"text": f"{self.title}: {self.shown_state}"}, margin={"t": 40})
        return final

    # -- text

    def text(self) -> str:
        lines = [f"{self.title}: {self.shown_state}  (actions: {', '.join(self.enabled_actions()) or 'none'})"]
        if self.action_error:
            lines.append(f"  refused: {self.action_error}")
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.samples:
            latest = {index: points[-1][1] for index, points in self.vcpu_utilisation().items()}
            if latest:
                lines.append("  host CPU: " + ", ".join(f"vCPU {i} {u:.0f} %" for i, u in sorted(latest.items())))
            used = sum(self.samples[-1].vcpu_seconds.values())
            lines.append(f"  vCPU time so far: {used:.2f} s;  QEMU RSS: {format_bytes(self.samples[-1].rss)}")
        paused = [end - start for state, start, end in self.stretches() if state == "paused"]
        if paused:
            lines.append(f"  paused {len(paused)} time(s), {sum(paused):.1f} s in all")
        console = self.console.rstrip("\n").splitlines()[-self.console_lines:]
        if console:
            lines.append("  serial console (last lines):")
            lines.extend(f"    | {line}" for line in console)
        return "\n".join(lines)


def thin(points: list[tuple[float, float]], limit: int = MAX_DRAWN) -> list[tuple[float, float]]:
    """At most *limit* of *points*: every k-th one, counted back from the newest (which is always kept)."""
    if len(points) <= limit:
        return points
    step = -(-len(points) // limit)  # ceiling division
    return points[::-1][::step][::-1]


def _click(panel_ref: weakref.ref[VMPanel], action: str, _button: widgets.Button) -> None:
    """A button's callback: starts the action and returns (the kernel stays free); holds the panel weakly."""
    panel = panel_ref()
    if panel is not None:
        panel.act(action, wait=False)


def _empty_chart() -> go.Figure:
    # Two rows on one time axis: what the VM costs the host (top) and how far its clock fell behind (bottom).
    fig = go.Figure()
    fig.add_scatter(name="QEMU RSS (MiB, right)", mode="lines+markers", x=[], y=[], yaxis="y2",
                    line={"dash": "dot"}, marker={"size": 4})
    fig.add_scatter(name="guest clock behind real time (s, below)", mode="lines+markers", x=[], y=[], yaxis="y3",
                    line={"shape": "hv"}, marker={"size": 4})
    fig.update_layout(
        template="plotly_white", height=CHART_HEIGHT, margin={"l": 50, "r": 50, "t": 24, "b": 40},
        xaxis={"title": {"text": "seconds since the panel opened"}, "rangemode": "tozero", "anchor": "y3"},
        yaxis={"title": {"text": "host CPU (%)"}, "rangemode": "tozero", "domain": [0.38, 1]},
        yaxis2={"title": {"text": "RSS (MiB)"}, "overlaying": "y", "side": "right", "rangemode": "tozero",
                "tickformat": ".0f", "showgrid": False},
        # whole seconds (the RTC's resolution); a pause of p seconds lifts the line by p
        yaxis3={"title": {"text": "behind (s)"}, "domain": [0, 0.26], "rangemode": "tozero", "dtick": 1,
                "anchor": "x"},
        legend={"orientation": "h", "y": -0.3},
    )
    return fig
