"""Tests for vlab.dashboards.exit_monitor with a small real exit-counting machine."""

from __future__ import annotations

import threading
import time
from collections import Counter

from tests.dashboards.waiting import wait_until
from vlab.dashboards import ExitCounter, ExitMonitor


class CountingMachine:
    """Counts 'exits' as a trap-and-emulate loop would: one per privileged operation it runs."""

    def __init__(self) -> None:
        self.exits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def run(self, program: list[str]) -> None:
        for operation in program:
            if operation in ("csrr", "csrw", "wfi", "ecall"):
                with self._lock:
                    self.exits["csr" if operation.startswith("csr") else operation] += 1

    def exit_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.exits)


def test_the_machine_satisfies_the_protocol() -> None:
    assert isinstance(CountingMachine(), ExitCounter)


def test_bars_follow_the_counts_most_frequent_first() -> None:
    machine = CountingMachine()
    with ExitMonitor(machine, interval=0) as monitor:
        assert list(monitor.chart.data[0].x) == []
        machine.run(["add", "csrr", "wfi", "csrw", "ecall", "csrr", "add"])
        monitor.refresh(force=True)
        assert list(monitor.chart.data[0].x) == ["csr", "ecall", "wfi"]
        assert list(monitor.chart.data[0].y) == [3, 1, 1]
        assert monitor.total == 5
        assert monitor.summary.value.startswith("5 exits, ")


def test_rate_is_exits_per_second_between_two_updates() -> None:
    machine = CountingMachine()
    with ExitMonitor(machine, interval=0) as monitor:
        machine.run(["wfi"] * 50)
        start = time.monotonic()
        monitor.refresh(force=True)
        machine.run(["wfi"] * 50)
        time.sleep(0.05)
        monitor.refresh(force=True)
        elapsed = time.monotonic() - start
        assert 50 / elapsed * 0.5 < monitor.rate <= 50 / 0.05


def test_live_updates_follow_a_machine_running_in_another_thread() -> None:
    machine = CountingMachine()
    monitor = ExitMonitor(machine, interval=0.01)
    monitor.start_updates()

    def guest() -> None:
        for _ in range(200):
            machine.run(["csrr", "wfi"])

    worker = threading.Thread(target=guest)
    worker.start()
    worker.join()
    assert wait_until(lambda: monitor.total >= 400)
    monitor.close()
    assert monitor.counts == {"csr": 200, "wfi": 200}


def test_text_lists_each_reason() -> None:
    machine = CountingMachine()
    machine.run(["wfi", "csrr", "csrr"])
    with ExitMonitor(machine) as monitor:
        lines = str(monitor).splitlines()
        assert lines[0].startswith("VM exits by reason: 3 exits")
        assert lines[1].split() == ["csr", "2"]
        assert lines[2].split() == ["wfi", "1"]
        assert monitor._repr_mimebundle_()["text/plain"] == str(monitor)
