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

import pytest

from vlab.dashboards import ControllableVM, VMPanel
from vlab.errors import StateError

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


def enabled(panel: VMPanel) -> list[str]:
    return [name for name, button in panel.buttons.items() if not button.disabled]


def test_the_test_vm_satisfies_the_protocol(vm: ThreadVM) -> None:
    assert isinstance(vm, ControllableVM)


def test_buttons_drive_the_vm_through_its_states(vm: ThreadVM, panel: VMPanel) -> None:
    assert "<code>created</code>" in panel.heading.value
    assert enabled(panel) == ["start"]
    panel.buttons["start"].click()
    assert vm.state is State.RUNNING
    assert "<code>running</code>" in panel.heading.value
    assert enabled(panel) == ["pause", "stop"]
    panel.buttons["pause"].click()
    assert (panel.state, enabled(panel)) == ("paused", ["resume", "stop"])
    panel.buttons["resume"].click()
    assert panel.state == "running"
    panel.buttons["stop"].click()
    assert (vm.state, enabled(panel)) == (State.STOPPED, ["start"])


def test_a_refused_action_is_shown_next_to_the_buttons_not_raised(panel: VMPanel) -> None:
    panel.buttons["start"].click()
    panel.buttons["start"].click()  # a programmatic click reaches the VM even though the button is disabled
    assert "cannot start while the object is 'running'" in panel.message.value
    assert "refused: start: cannot start" in panel.text()
    panel.buttons["pause"].click()
    assert panel.message.value == ""


def test_metrics_and_console_are_read_only_while_the_vm_exists(vm: ThreadVM, panel: VMPanel) -> None:
    panel.refresh(force=True)
    assert vm.metric_reads == 0 and not panel.samples
    assert panel.console == "" and vm.console_reads == 0
    panel.buttons["start"].click()
    assert vm.metric_reads == 1 and len(panel.samples) == 1
    assert vm.console_reads == 1
    panel.buttons["stop"].click()
    assert vm.console_reads == 1 and "vcpu" in panel.console  # the last lines read stay on show


def test_chart_shows_rss_and_the_busy_vcpu_above_the_idle_one(vm: ThreadVM, panel: VMPanel) -> None:
    panel.buttons["start"].click()
    for _ in range(3):
        time.sleep(0.15)
        panel.refresh(force=True)
    rss_trace = panel.chart.data[0]
    assert len(rss_trace.y) == 4
    assert rss_trace.y[-1] == pytest.approx(vm.rss_bytes() / 2**20, rel=0.2)
    vcpus = {trace.name: trace for trace in panel.chart.data[1:]}
    assert set(vcpus) == {"vCPU 0", "vCPU 1"}
    busy, idle = sum(vcpus["vCPU 0"].y), sum(vcpus["vCPU 1"].y)
    assert busy > idle
    assert "host CPU: vCPU 0" in panel.text()


def test_console_tail_is_shown_escaped(vm: ThreadVM, panel: VMPanel) -> None:
    panel.buttons["start"].click()
    vm.console.append("<b>not bold</b>")
    panel.refresh(force=True)
    assert "vcpu0: online" in panel.console_view.value
    assert "&lt;b&gt;not bold&lt;/b&gt;" in panel.console_view.value
    assert "    | vcpu0: online" in panel.text()


def test_live_updates_collect_samples_until_closed(vm: ThreadVM) -> None:
    view = VMPanel(vm, interval=0.02)
    view.buttons["start"].click()
    view.start_updates()
    deadline = time.monotonic() + 5
    while len(view.samples) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(view.samples) >= 5
    view.close()
    assert not view.updating
    count = len(view.samples)
    time.sleep(0.1)
    assert len(view.samples) == count


def test_text_plain_fallback_goes_with_the_widget_view(panel: VMPanel) -> None:
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == str(panel) == panel.text()
    assert bundle["text/plain"].startswith("thread-vm: created  (actions: start)")
    assert "application/vnd.jupyter.widget-view+json" in bundle


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
