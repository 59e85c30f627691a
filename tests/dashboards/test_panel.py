"""Tests for vlab.dashboards.panel: throttling, live updates, errors, closing, and use in a real Jupyter kernel."""

from __future__ import annotations

import gc
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pytest

from tests.dashboards.waiting import wait_until
from vlab.dashboards.panel import Panel
from vlab.errors import StateError

REPO = Path(__file__).resolve().parents[2]


class CountingPanel(Panel):
    """The smallest real panel: shows how often it was redrawn, and can be told to fail."""

    def __init__(self, interval: float) -> None:
        super().__init__(interval=interval, title="counter")
        self.updates = 0
        self.fail_with: Exception | None = None
        self.label = widgets.Label()
        self.widget.children = (self.label, self.status)

    def _update(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.updates += 1
        self.label.value = str(self.updates)

    def text(self) -> str:
        return f"counter: {self.updates}"




def test_refresh_is_throttled_and_the_deferred_redraw_still_happens() -> None:
    with CountingPanel(interval=0.2) as panel:
        assert panel.refresh() is True
        assert panel.refresh() is False  # too soon: deferred, not dropped
        assert panel.updates == 1
        assert wait_until(lambda: panel.updates == 2)
        assert panel.label.value == "2"


def test_forced_refresh_ignores_the_throttle() -> None:
    with CountingPanel(interval=60) as panel:
        panel.refresh()
        assert panel.refresh(force=True) is True
        assert panel.updates == 2


def test_live_updates_run_in_the_background_and_stop_on_close() -> None:
    panel = CountingPanel(interval=0.01)
    panel.start_updates()
    assert panel.updating
    assert wait_until(lambda: panel.updates >= 5)
    panel.close()
    assert not panel.updating
    settled = panel.updates
    time.sleep(0.05)
    assert panel.updates == settled


def test_a_closed_panel_refuses_work_and_its_widgets_are_closed() -> None:
    panel = CountingPanel(interval=0.01)
    label = panel.label
    panel.close()
    panel.close()  # idempotent
    assert label.comm is None  # ipywidgets drops the comm of a closed widget
    assert panel._repr_mimebundle_() == {"text/plain": "counter: 0"}
    with pytest.raises(StateError, match="closed"):
        panel.refresh()
    with pytest.raises(StateError):
        panel.start_updates()


def test_a_failing_read_is_shown_and_clears_when_reads_work_again() -> None:
    with CountingPanel(interval=0) as panel:
        panel.fail_with = OSError("QMP socket closed")
        panel.refresh(force=True)
        assert panel.error == "OSError: QMP socket closed"
        assert "QMP socket closed" in panel.status.value
        panel.fail_with = None
        panel.refresh(force=True)
        assert panel.error is None and panel.status.value == ""


def test_a_forgotten_panel_does_not_keep_its_thread_alive() -> None:
    panel = CountingPanel(interval=0.01)
    panel.start_updates()
    thread = panel._updater
    assert thread is not None
    del panel
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_text_forms() -> None:
    with CountingPanel(interval=0) as panel:
        panel.refresh(force=True)
        assert str(panel) == "counter: 1"
        printed: list[str] = []

        class Printer:
            def text(self, value: str) -> None:
                printed.append(value)

        panel._repr_pretty_(Printer(), cycle=False)
        assert printed == ["counter: 1"]


def test_panels_display_and_update_live_inside_a_real_jupyter_kernel() -> None:
    # A Label-based panel keeps the kernel's imports small; the threading and display path under test is the same
    # as for the chart panels (their charts are Output widgets, see test_closing_a_displayed_panel_…).
    code = textwrap.dedent("""
        import sys
        import ipywidgets as widgets
        sys.path.insert(0, REPO)  # the kernel may start elsewhere: the tests' own polling helper
        from tests.dashboards.waiting import wait_until
        from vlab.dashboards.panel import Panel
        class Ticker(Panel):
            def __init__(self):
                super().__init__(interval=0.02, title="ticker")
                self.ticks = 0
                self.label = widgets.Label()
                self.widget.children = (self.label, self.status)
            def _update(self):
                self.ticks += 1
                self.label.value = str(self.ticks)
            def text(self):
                return f"ticker: {self.ticks}"
        panel = Ticker()
        display(panel)
        panel.start_updates()
        wait_until(lambda: panel.ticks >= 5, 30)
        panel.close()
        print("ticks", panel.ticks, "error", panel.error, "updating", panel.updating)
    """).replace("REPO", repr(str(REPO)))
    outputs = run_in_kernel(code)
    errors = [m["content"] for m in outputs if m["msg_type"] == "error"]
    assert not errors, errors
    displayed = [m["content"]["data"] for m in outputs if m["msg_type"] == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in displayed[0]
    assert displayed[0]["text/plain"] == "ticker: 0"
    printed = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream").split()
    assert printed[0] == "ticks" and int(printed[1]) >= 5
    assert printed[2:] == ["error", "None", "updating", "False"]


def test_closing_a_displayed_panel_replaces_its_widget_by_the_static_figure_in_a_real_kernel() -> None:
    # A view summarising a finished run must stay visible after its cell: close() first updates the display
    # (same display id) to the plotly figure, then closes the widgets.
    code = textwrap.dedent("""
        from vlab.dashboards import MigrationView
        view = MigrationView([{"round": 1, "remaining": 2**24, "transferred": 0, "time": 0.1}], interval=0)
        display(view)
        view.add({"round": 2, "remaining": 2**20, "transferred": 2**24, "time": 0.3})
        view.close()
    """)
    outputs = run_in_kernel(code)
    assert not [m for m in outputs if m["msg_type"] == "error"]
    shown = [m["content"] for m in outputs if m["msg_type"] == "display_data"]
    updates = [m["content"] for m in outputs if m["msg_type"] == "update_display_data"]
    assert "application/vnd.jupyter.widget-view+json" in shown[0]["data"]
    display_id = shown[0]["transient"]["display_id"]
    assert [u["transient"]["display_id"] for u in updates] == [display_id]
    final = updates[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" not in final
    assert final["application/vnd.plotly.v1+json"]["data"][0]["x"] == [1, 2]
    assert final["text/plain"].startswith("pre-copy: bytes remaining per round: round 2")


def run_in_kernel(code: str) -> list[dict[str, Any]]:
    """Run *code* in a fresh IPython kernel; return the messages it sent back."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    outputs: list[dict[str, Any]] = []
    try:
        client.execute_interactive(code, output_hook=outputs.append, timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return outputs


def test_threads_left_running_by_this_module_are_none() -> None:
    assert not [t for t in threading.enumerate() if t.name.startswith("vlab-CountingPanel")]
