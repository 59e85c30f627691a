"""The VM panel on a real QEMU guest (TCG): sampled from the boot on, a pause shaded, and a stop that holds the
VM's state lock for seconds blocking neither the click nor the redraws."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.dashboards.waiting import wait_until
from vlab.dashboards import VMPanel
from vlab.errors import VlabError
from vlab.qemu import VM, VMConfig, default_initrd, default_kernel

pytestmark = [pytest.mark.qemu, pytest.mark.slow]




@pytest.fixture
def vm() -> Iterator[VM]:
    try:
        default_kernel(), default_initrd()
    except VlabError as exc:
        pytest.skip(f"guest images not built ({exc.value}): run `vlab images build`")
    # a cold boot: a template restore (0.2 s) may end before the panel's first sample, and the boot is sampled
    machine = VM(VMConfig(name="panel-qemu", accel="tcg", cold_boot=True))
    try:
        yield machine
    finally:
        machine.kill()


def test_a_real_vm_through_the_panel_buttons(vm: VM) -> None:
    with VMPanel(vm, interval=0.5) as panel:
        panel.start_updates()
        clicked = time.monotonic()
        panel.buttons["start"].click()
        assert time.monotonic() - clicked < 0.5  # the boot runs on the panel's worker thread
        assert panel.shown_state == "starting" and panel.enabled_actions() == []
        assert wait_until(lambda: panel.state == "running", 120)
        assert panel.wait_idle(30)
        assert any(state == "starting" for _, state in panel.timeline)  # sampled while booting too
        assert wait_until(lambda: len(panel.vcpu_utilisation().get(0, [])) >= 3, 10)
        # the buttons follow at the next redraw (each sample's), not at once
        assert wait_until(lambda: panel.enabled_actions() == ["pause", "stop"], 5), panel.enabled_actions()

        assert wait_until(lambda: len(panel.guest_lag()) >= 3, 10)
        panel.buttons["pause"].click()
        assert panel.wait_idle(10) and panel.state == "paused"
        time.sleep(2.5)  # the guest's clock (the RTC, whole seconds) stands still meanwhile
        panel.buttons["resume"].click()
        assert panel.wait_idle(10)
        assert wait_until(lambda: panel.state == "running", 5)
        [(_, paused_at, resumed_at)] = [s for s in panel.stretches() if s[0] == "paused"]
        assert resumed_at - paused_at >= 2.25
        before = [behind for t, behind in panel.guest_lag() if t < paused_at]
        assert before and all(abs(behind) <= 1.5 for behind in before)  # running: on time, to the RTC's second
        assert wait_until(lambda: panel.guest_lag()[-1][1] >= resumed_at - paused_at - 1.5, 5)

        vm.console.run("echo tail-check")
        assert wait_until(lambda: "tail-check" in panel.console, 5)
        panel.buttons["stop"].click()  # ACPI powerdown first: the VM holds its state lock meanwhile
        assert panel.shown_state == "stopping" and panel.enabled_actions() == []
        started = time.monotonic()
        panel.refresh(force=True)  # from the notebook's thread, while stop() runs
        assert time.monotonic() - started < panel.read_wait + 0.5
        assert panel.wait_idle(60)
        assert wait_until(lambda: panel.state == "stopped", 10)
        assert panel.enabled_actions() == []
        assert panel.action_error is None
        assert "the last lines read before the VM stopped" in panel.console_view.value
