"""A control panel for one VM: buttons, state, host CPU per vCPU and QEMU's RSS, the console.

Layout (top to bottom): a title line with the state, the Start / Pause /
Resume / Stop buttons, a message line for refused actions, a chart (host CPU %
per vCPU thread on the left axis, QEMU RSS in MiB on the right) and the tail of
the serial console. The chart plots utilisation — the growth of each vCPU
thread's CPU seconds between two samples, divided by the time between them —
which is what ``top`` shows for those threads.
"""

from __future__ import annotations

import functools
import html
import itertools
import time
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import ipywidgets as widgets
import plotly.graph_objects as go

from vlab.dashboards.panel import DEFAULT_INTERVAL, Panel, error_html
from vlab.dashboards.protocols import ACTIVE_STATES, CONSOLE_STATES, ControllableVM, state_name
from vlab.measure import format_bytes

__all__ = ["ACTIONS", "ENABLED_IN", "VMPanel"]

ACTIONS = ("start", "pause", "resume", "stop")
#: the states in which each button is enabled; in a state not listed here at all, every button is
ENABLED_IN: Mapping[str, frozenset[str]] = {
    "start": frozenset({"created", "stopped", "failed"}),
    "pause": frozenset({"running"}),
    "resume": frozenset({"paused"}),
    "stop": frozenset({"starting", "running", "paused"}),
}
_KNOWN_STATES = frozenset().union(*ENABLED_IN.values(), {"stopping"})
MIB = 2.0**-20


@dataclass(frozen=True)
class _HostSample:
    time: float
    vcpu_seconds: Mapping[int, float]
    rss: int


class VMPanel(Panel):
    """Start, pause, resume and stop a VM and watch what it costs the host.

    ::

        panel = VMPanel(vm)        # any object satisfying ControllableVM
        panel                      # shows the widget (or its text in a terminal)
        panel.start_updates()      # live: refresh every 0.5 s from a background thread
        ...
        panel.close()              # stops the updates; the VM itself is left as it is

    :param vm: the VM (see :class:`~vlab.dashboards.protocols.ControllableVM`).
    :param interval: minimum seconds between redraws.
    :param history: how many samples the chart keeps.
    :param console_lines: how many console lines to show.
    """

    def __init__(self, vm: ControllableVM, *, interval: float = DEFAULT_INTERVAL, history: int = 120,
                 console_lines: int = 12) -> None:
        super().__init__(interval=interval, title=str(getattr(vm, "name", "") or "VM"))
        self.vm = vm
        self.console_lines = console_lines
        self.samples: deque[_HostSample] = deque(maxlen=history)
        self.state = state_name(vm.state)
        self.console = ""
        self.action_error: str | None = None
        self._t0 = time.monotonic()
        self._vcpu_traces: dict[int, int] = {}
        self.heading = widgets.HTML()
        self.buttons = {name: widgets.Button(description=name.capitalize(), tooltip=f"vm.{name}()")
                        for name in ACTIONS}
        for name, button in self.buttons.items():
            button.on_click(functools.partial(_click, weakref.ref(self), name))
        self.message = widgets.HTML()
        self.chart = go.FigureWidget(_empty_chart())
        self.console_view = widgets.HTML()
        self.widget.children = (self.heading, widgets.HBox(list(self.buttons.values())), self.message,
                                self.status, self.chart, self.console_view)
        self.refresh(force=True)

    # -- actions

    def act(self, action: str) -> None:
        """Run ``vm.<action>()`` (what a button click does); a refusal is shown, not raised."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
        try:
            getattr(self.vm, action)()
            self.action_error = None
        except Exception as exc:  # shown to the student next to the buttons; the panel stays usable
            reason = str(exc)
            self.action_error = reason if reason.startswith(action) else f"{action}: {reason}"
        self.message.value = error_html(self.action_error) if self.action_error else ""
        if not self.closed:
            self.refresh(force=True)

    # -- redraw

    def _update(self) -> None:
        self.state = state_name(self.vm.state)
        self._show_state()
        if self.state in CONSOLE_STATES:  # afterwards the last lines read stay on show
            self.console = self.vm.console_tail(self.console_lines)
            self.console_view.value = f"<pre style='margin:0'>{html.escape(self.console, quote=False)}</pre>"
        if self.state in ACTIVE_STATES:
            self.samples.append(_HostSample(time.monotonic() - self._t0, dict(self.vm.vcpu_times()),
                                            int(self.vm.rss_bytes())))
            self._draw_chart()

    def _show_state(self) -> None:
        self.heading.value = f"<b>{html.escape(self.title)}</b> — state: <code>{html.escape(self.state)}</code>"
        for name, button in self.buttons.items():
            button.disabled = self.state in _KNOWN_STATES and self.state not in ENABLED_IN[name]

    def _draw_chart(self) -> None:
        utilisation = self.vcpu_utilisation()
        with self.chart.batch_update():
            self.chart.data[0].x = [s.time for s in self.samples]
            self.chart.data[0].y = [s.rss * MIB for s in self.samples]
            for index, points in utilisation.items():
                if index not in self._vcpu_traces:
                    self.chart.add_scatter(name=f"vCPU {index}", mode="lines", x=[], y=[])
                    self._vcpu_traces[index] = len(self.chart.data) - 1
                trace = self.chart.data[self._vcpu_traces[index]]
                trace.x = [t for t, _ in points]
                trace.y = [u for _, u in points]

    def vcpu_utilisation(self) -> dict[int, list[tuple[float, float]]]:
        """Per vCPU, ``(time, host CPU %)`` between consecutive samples (100 % = one host core)."""
        with self._lock:  # the update thread appends to the deque
            samples = list(self.samples)
        series: dict[int, list[tuple[float, float]]] = {}
        for before, after in itertools.pairwise(samples):
            elapsed = after.time - before.time
            for index, seconds in after.vcpu_seconds.items():
                if index in before.vcpu_seconds and elapsed > 0:
                    used = max(0.0, seconds - before.vcpu_seconds[index])  # a restarted VM starts again at 0
                    series.setdefault(index, []).append((after.time, 100 * used / elapsed))
        return series

    # -- text

    def text(self) -> str:
        enabled = [name for name, button in self.buttons.items() if not button.disabled]
        lines = [f"{self.title}: {self.state}  (actions: {', '.join(enabled) or 'none'})"]
        if self.action_error:
            lines.append(f"  refused: {self.action_error}")
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.samples:
            latest = {index: points[-1][1] for index, points in self.vcpu_utilisation().items()}
            if latest:
                lines.append("  host CPU: " + ", ".join(f"vCPU {i} {u:.0f} %" for i, u in sorted(latest.items())))
            lines.append(f"  QEMU RSS: {format_bytes(self.samples[-1].rss)}")
        console = self.console.rstrip("\n").splitlines()[-self.console_lines:]
        if console:
            lines.append("  console:")
            lines.extend(f"    | {line}" for line in console)
        return "\n".join(lines)


def _click(panel_ref: weakref.ref[VMPanel], action: str, _button: widgets.Button) -> None:
    """A button's callback; it holds the panel weakly so the widget registry does not keep it alive."""
    panel = panel_ref()
    if panel is not None:
        panel.act(action)


def _empty_chart() -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(name="QEMU RSS", mode="lines", x=[], y=[], yaxis="y2", line={"dash": "dot"})
    fig.update_layout(
        template="plotly_white", height=260, margin={"l": 50, "r": 50, "t": 10, "b": 40},
        xaxis={"title": {"text": "time (s)"}},
        yaxis={"title": {"text": "host CPU (%)"}, "rangemode": "tozero"},
        yaxis2={"title": {"text": "RSS (MiB)"}, "overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
