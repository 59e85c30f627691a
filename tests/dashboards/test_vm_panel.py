"""Tests for vlab.dashboards.vm_panel, driven by a small real in-process "VM".

``ThreadVM`` satisfies the ControllableVM protocol with real moving parts: each
vCPU is a Python thread (vCPU 0 spins, vCPU 1 sleeps on an event), their host
CPU time is read from /proc/self/task/<tid>/stat like QEMU's vCPU threads, RSS
from /proc/self/status and the console is what the threads print. No QEMU is
started: these tests check the panel's wiring, not the VM.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import pytest

from tests.dashboards.waiting import wait_until
from vlab.dashboards import ClockedVM, ControllableVM, VMPanel
from vlab.dashboards.vm_panel import LAG_WINDOW
from vlab.errors import StateError, VlabError
from vlab.plots import mimebundle

TICKS = os.sysconf("SC_CLK_TCK")


class State(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class ThreadVM:
    """Two 'vCPU' threads in this process; vCPU 0 burns CPU while running, vCPU 1 idles."""

    name = "thread-vm"

    def __init__(self) -> None:
        self.state = State.CREATED
        self.console: list[str] = []
        self.metric_reads = 0
        self.console_reads = 0
        self._run = threading.Event()
        self._quit = threading.Event()
        self._threads: list[threading.Thread] = []
        self._online = threading.Barrier(3)  # two vCPUs and start()

    def _guard(self, operation: str, *allowed: State) -> None:
        if self.state not in allowed:
            raise StateError(operation, self.state.value, [s.value for s in allowed])

    def start(self) -> None:
        self._guard("start", State.CREATED)
        self._threads = [threading.Thread(target=self._vcpu, args=(i,), daemon=True) for i in range(2)]
        self._run.set()
        for thread in self._threads:
            thread.start()
        self._online.wait()  # like a VM's start(), return once the guest is up
        self.state = State.RUNNING

    def pause(self) -> None:
        self._guard("pause", State.RUNNING)
        self._run.clear()
        self.state = State.PAUSED

    def resume(self) -> None:
        self._guard("resume", State.PAUSED)
        self._run.set()
        self.state = State.RUNNING

    def stop(self) -> None:
        self._guard("stop", State.RUNNING, State.PAUSED)
        self._quit.set()
        self._run.set()
        for thread in self._threads:
            thread.join()
        self.state = State.STOPPED

    def _vcpu(self, index: int) -> None:
        self.console.append(f"vcpu{index}: online")
        self._online.wait()
        while not self._quit.is_set():
            self._run.wait()
            if index == 0:
                deadline = time.monotonic() + 0.01
                while time.monotonic() < deadline:
                    pass
            else:
                self._quit.wait(0.05)

    def vcpu_times(self) -> dict[int, float]:
        self.metric_reads += 1
        times = {}
        for index, thread in enumerate(self._threads):
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            times[index] = (int(fields[11]) + int(fields[12])) / TICKS
        return times

    def rss_bytes(self) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def console_tail(self, n: int) -> str:
        self.console_reads += 1
        return "\n".join(sorted(self.console)[-n:]) + "\n"


@pytest.fixture
def vm() -> Iterator[ThreadVM]:
    machine = ThreadVM()
    yield machine
    if machine.state in (State.RUNNING, State.PAUSED):
        machine.stop()


@pytest.fixture
def panel(vm: ThreadVM) -> Iterator[VMPanel]:
    with VMPanel(vm, interval=0.05) as view:
        yield view
        view.wait_idle(10)


def enabled(panel: VMPanel) -> list[str]:
    return panel.enabled_actions()


def click(panel: VMPanel, action: str) -> None:
    """Click a button as the browser does, then wait for the action the click started on the worker thread."""
    panel.buttons[action].click()
    assert panel.wait_idle(10), f"{action} did not finish"




def test_the_test_vm_satisfies_the_protocol(vm: ThreadVM) -> None:
    assert isinstance(vm, ControllableVM)


def test_buttons_drive_the_vm_through_its_states_and_are_enabled_exactly_when_valid(
        vm: ThreadVM, panel: VMPanel) -> None:
    assert "<code>created</code>" in panel.heading.value
    assert enabled(panel) == ["start"]
    click(panel, "start")
    assert vm.state is State.RUNNING
    assert "<code>running</code>" in panel.heading.value
    assert enabled(panel) == ["pause", "stop"]
    click(panel, "pause")
    assert (panel.state, enabled(panel)) == ("paused", ["resume", "stop"])
    click(panel, "resume")
    assert (panel.state, enabled(panel)) == ("running", ["pause", "stop"])
    click(panel, "stop")
    # a stopped VM cannot start again (vlab.VM wants a new one): no button is left that would fail
    assert (vm.state, enabled(panel)) == (State.STOPPED, [])
    assert panel.text().startswith("thread-vm: stopped  (actions: none)")


def test_every_enabled_button_works_in_every_state_it_is_enabled_in(vm: ThreadVM, panel: VMPanel) -> None:
    # walk the state machine by the enabled buttons only, each once: none of them may be refused
    clicked: list[str] = []
    while choices := enabled(panel):
        action = next((a for a in choices if a not in clicked), choices[-1])
        click(panel, action)
        clicked.append(action)
        assert panel.action_error is None, panel.action_error
    assert clicked == ["start", "pause", "resume", "stop"]
    assert vm.state is State.STOPPED


def test_a_refused_action_is_shown_next_to_the_buttons_not_raised(panel: VMPanel) -> None:
    panel.act("start")
    panel.act("start")  # a programmatic call reaches the VM even though the button is disabled
    assert "cannot start while the object is 'running'" in panel.message.value
    assert "refused: start: cannot start" in panel.text()
    click(panel, "pause")
    assert panel.message.value == ""


def test_an_unknown_action_names_the_field_and_the_choices(panel: VMPanel) -> None:
    with pytest.raises(VlabError, match="action") as caught:
        panel.act("reboot; rm -rf /")
    assert "start, pause, resume, stop" in str(caught.value)


def test_metrics_and_console_are_read_only_while_the_vm_exists(vm: ThreadVM, panel: VMPanel) -> None:
    panel.refresh(force=True)
    assert vm.metric_reads == 0 and not panel.samples
    assert panel.console == "" and vm.console_reads == 0
    click(panel, "start")
    assert vm.metric_reads == 1 and len(panel.samples) == 1
    assert vm.console_reads == 1
    click(panel, "stop")
    assert vm.console_reads == 1 and "vcpu" in panel.console  # the last lines read stay on show
    assert "the last lines read before the VM stopped" in panel.console_view.value


def burn(vm: ThreadVM, seconds: float) -> None:
    """Wait until vCPU 0 has burnt *seconds* more of host CPU time."""
    until = vm.vcpu_times()[0] + seconds
    assert wait_until(lambda: vm.vcpu_times()[0] >= until, 10)


def test_chart_shows_rss_and_the_busy_vcpu_above_the_idle_one_with_markers(vm: ThreadVM, panel: VMPanel) -> None:
    click(panel, "start")
    for _ in range(3):  # between two samples, vCPU 0 burns at least 50 ms of CPU, however loaded the host
        burn(vm, 0.05)
        panel.refresh(force=True)
    rss_trace = panel.chart.data[0]
    assert len(rss_trace.y) == 4
    assert rss_trace.y[-1] == pytest.approx(vm.rss_bytes() / 2**20, rel=0.2)
    vcpus = {trace.name: trace for trace in panel.chart.data[2:]}
    assert set(vcpus) == {"vCPU 0 host CPU", "vCPU 1 host CPU"}
    assert all("markers" in trace.mode for trace in panel.chart.data)  # 2 points are visible, not just a line
    busy, idle = sum(vcpus["vCPU 0 host CPU"].y), sum(vcpus["vCPU 1 host CPU"].y)
    assert busy > idle
    assert "host CPU: vCPU 0" in panel.text()


def test_a_long_history_is_thinned_for_the_browser_keeping_the_newest_point() -> None:
    from vlab.dashboards.vm_panel import MAX_DRAWN, thin

    points = [(float(i), float(i)) for i in range(1000)]
    drawn = thin(points)
    assert len(drawn) <= MAX_DRAWN and drawn[-1] == (999.0, 999.0)
    assert drawn == sorted(drawn) and thin(points[:10]) == points[:10]


def test_markers_while_points_are_few_then_lines(vm: ThreadVM) -> None:
    with VMPanel(vm, interval=0.01) as view:
        click(view, "start")
        view.refresh(force=True)
        assert {trace.mode for trace in view.chart.data} == {"lines+markers"}
        for _ in range(130):
            view._read()
        view.refresh(force=True)
        assert {trace.mode for trace in view.chart.data} == {"lines"}
        view.act("stop")


def test_the_chart_is_drawn_as_plotly_json_in_an_output_widget_not_a_figure_widget(panel: VMPanel) -> None:
    click(panel, "start")
    panel.refresh(force=True)
    (output,) = panel.chart_view.widget.outputs
    plotly_json = output["data"]["application/vnd.plotly.v1+json"]
    assert [trace["name"] for trace in plotly_json["data"]][:1] == ["QEMU RSS (MiB, right)"]
    # what the notebook keeps of the chart is its JSON: kilobytes, not plotly.js's megabytes
    assert len(str(output)) < 20_000


def test_a_pause_is_shaded_on_the_chart_and_counted_in_the_text(vm: ThreadVM, panel: VMPanel) -> None:
    click(panel, "start")
    panel.refresh(force=True)
    click(panel, "pause")
    time.sleep(0.2)
    panel.refresh(force=True)
    click(panel, "resume")
    [(state, start, end)] = panel.stretches()
    assert state == "paused" and end - start >= 0.2
    [shape] = panel.chart.layout.shapes
    assert (shape.x0, shape.x1) == (start, end)
    assert [note.text for note in panel.chart.layout.annotations] == ["paused"]
    assert "paused 1 time(s)" in panel.text()


class ClockedThreadVM(ThreadVM):
    """ThreadVM with a guest clock that advances only while it runs, as a paused QEMU's RTC does."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = 0.0
        self._since: float | None = None

    def start(self) -> None:
        super().start()
        self._since = time.monotonic()

    def pause(self) -> None:
        super().pause()
        assert self._since is not None
        self._clock += time.monotonic() - self._since
        self._since = None

    def resume(self) -> None:
        super().resume()
        self._since = time.monotonic()

    def guest_clock(self) -> float:
        return self._clock + (time.monotonic() - self._since if self._since is not None else 0.0)


def test_a_pause_lifts_the_guest_clock_line_by_its_length_and_running_keeps_it_flat() -> None:
    vm = ClockedThreadVM()
    with VMPanel(vm, interval=0.05) as panel:
        assert isinstance(vm, ClockedVM) and not isinstance(ThreadVM(), ClockedVM)
        click(panel, "start")
        for _ in range(3):
            panel.refresh(force=True)
            time.sleep(0.05)
        assert all(abs(behind) < 0.05 for _, behind in panel.guest_lag())  # running: on time
        clicked = time.monotonic()
        click(panel, "pause")
        time.sleep(0.3)
        panel.refresh(force=True)
        click(panel, "resume")
        resumed = time.monotonic()
        panel.refresh(force=True)
        assert [state for state, _, _ in panel.stretches()] == ["paused"]
        time.sleep(LAG_WINDOW)  # the line is the floor of its last LAG_WINDOW seconds: let the step through
        panel.refresh(force=True)
        behind = panel.guest_lag()[-1][1]
        assert 0.3 <= behind <= resumed - clicked  # the pause, however the panel's samples fell around it
        lag_trace = panel.chart.data[1]
        assert lag_trace.name.startswith("guest clock behind") and lag_trace.yaxis == "y3"
        assert list(lag_trace.y) == [s for _, s in panel.guest_lag()]
        panel.act("stop")


def test_a_whole_second_clock_draws_a_flat_line_not_a_sawtooth() -> None:
    """QEMU's RTC reads in whole seconds: sampled every 0.25 s, the raw difference is a 1 s sawtooth."""
    panel = VMPanel(ThreadVM(), interval=1.0)
    for i in range(40):  # 10 s running on time, read four times a second
        panel.samples.append(_sample(i * 0.25, float(int(i * 0.25))))
    for i in range(40, 48):  # 2 s paused: the clock stands at 10
        panel.samples.append(_sample(i * 0.25, 10.0))
    for i in range(48, 80):  # running again, 2 s behind
        panel.samples.append(_sample(i * 0.25, float(int(i * 0.25 - 2))))
    lag = dict(panel.guest_lag())
    assert all(abs(lag[t]) < 1e-9 for t in lag if t < 10)  # flat at 0, not 0, .25, .5, .75, 0, ...
    assert all(abs(lag[t] - 2) < 1e-9 for t in lag if t >= 13.5)  # flat at the pause's 2 s
    panel.close()


def _sample(t: float, clock: float) -> Any:
    from vlab.dashboards.vm_panel import _HostSample

    return _HostSample(t, {0: 0.0}, 1 << 20, clock)


def test_without_a_guest_clock_the_line_stays_empty(vm: ThreadVM, panel: VMPanel) -> None:
    click(panel, "start")
    panel.refresh(force=True)
    assert panel.guest_lag() == [] and list(panel.chart.data[1].y) == []


def test_console_tail_is_labelled_and_shown_escaped(vm: ThreadVM, panel: VMPanel) -> None:
    assert "Serial console of thread-vm" in panel.console_view.value
    assert "(no output yet)" in panel.console_view.value
    click(panel, "start")
    vm.console.append("<b>not bold</b>")
    panel.refresh(force=True)
    assert "ttyS0, last 12 lines, live" in panel.console_view.value
    assert "vcpu0: online" in panel.console_view.value
    assert "&lt;b&gt;not bold&lt;/b&gt;" in panel.console_view.value
    assert "    | vcpu0: online" in panel.text()


class SlowStopVM(ThreadVM):
    """Like vlab.VM: ``stop()`` holds the state lock for a while, and reading ``state`` takes that lock."""

    name = "slow-stop"
    stop_seconds = 1.5

    def __init__(self) -> None:
        self._state_lock = threading.RLock()
        super().__init__()

    @property
    def state(self) -> State:
        with self._state_lock:
            return self._state

    @state.setter
    def state(self, value: State) -> None:
        self._state = value

    def stop(self) -> None:
        with self._state_lock:
            time.sleep(self.stop_seconds)
            super().stop()


def test_a_slow_stop_neither_blocks_the_click_nor_the_redraws(vm: ThreadVM) -> None:
    slow = SlowStopVM()
    with VMPanel(slow, interval=0.05) as view:
        view.act("start")
        view.start_updates()
        started = time.monotonic()
        view.buttons["stop"].click()
        assert time.monotonic() - started < 0.3  # the callback only starts the action
        assert "<code>stopping</code>" in view.heading.value
        assert enabled(view) == []
        assert view.text().startswith("slow-stop: stopping  (actions: none)")
        # the kernel's thread is free: a redraw from it returns at once, a refresh within read_wait
        started = time.monotonic()
        view.refresh(force=True)
        assert time.monotonic() - started < view.read_wait + 0.3
        assert wait_until(lambda: view.vm_busy, 2)
        assert "waiting for the VM" in view.heading.value or "running" in view.heading.value
        assert view.wait_idle(10)
        assert wait_until(lambda: view.state == "stopped" and not view.vm_busy, 5)
        assert enabled(view) == []
        assert view.updating  # the sampler lived through the stop


def test_a_second_click_while_an_action_runs_is_refused_not_queued() -> None:
    slow = SlowStopVM()
    slow.stop_seconds = 0.5
    with VMPanel(slow, interval=0.05) as view:
        view.act("start")
        view.act("stop", wait=False)
        view.act("pause", wait=False)
        assert view.action_error == "pause: wait, stop is still running"
        assert view.wait_idle(10)
        assert slow.state is State.STOPPED and view.action_error is None


def test_live_updates_collect_samples_until_closed(vm: ThreadVM) -> None:
    view = VMPanel(vm, interval=0.02)
    click(view, "start")
    view.start_updates()
    assert wait_until(lambda: len(view.samples) >= 5)
    view.close()
    assert not view.updating
    count = len(view.samples)
    time.sleep(0.1)
    assert len(view.samples) == count


def test_live_updates_sample_four_times_a_second_even_when_redrawing_once_a_second(vm: ThreadVM) -> None:
    with VMPanel(vm, interval=1.0) as view:
        click(view, "start")
        drawn, sampled = view.refreshes, len(view.samples)
        view.start_updates()
        assert wait_until(lambda: len(view.samples) >= sampled + 6, 30)  # ~1.5 s at 4 samples a second
        samples, redraws = len(view.samples) - sampled, view.refreshes - drawn
    # about one redraw per 4 samples however slowly the samples came; sampling at the redraw rate makes it one each
    assert redraws <= 1 + samples // 2, (samples, redraws)


def test_text_plain_fallback_goes_with_the_widget_view_and_a_closed_panel_is_a_static_figure(
        panel: VMPanel) -> None:
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == str(panel) == panel.text()
    assert bundle["text/plain"].startswith("thread-vm: created  (actions: start)")
    assert "application/vnd.jupyter.widget-view+json" in bundle
    click(panel, "start")
    panel.close()
    closed = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in closed
    assert closed["application/vnd.plotly.v1+json"]["layout"]["title"]["text"] == "thread-vm: running"
    assert closed["text/plain"] == panel.text()


def test_history_must_be_a_sane_number_of_samples(vm: ThreadVM) -> None:
    for bad in (0, -5, 10**9, 2.5, True):
        with pytest.raises(VlabError, match="history"):
            VMPanel(vm, history=bad)  # type: ignore[arg-type]


class OddStateVM(ThreadVM):
    """A VM whose state names the panel does not know."""

    @property  # type: ignore[override]
    def state(self) -> str:
        return "migrating"

    @state.setter
    def state(self, value: object) -> None:
        pass


def test_in_an_unknown_state_every_button_is_left_to_the_vm(vm: ThreadVM) -> None:
    with VMPanel(OddStateVM()) as view:
        assert view.state == "migrating"
        assert enabled(view) == ["start", "pause", "resume", "stop"]


def test_mimebundle_of_the_chart_is_what_plots_show_displays(panel: VMPanel) -> None:
    assert panel.chart_view.widget.outputs[0]["data"] == mimebundle(panel.chart)
