"""vlab.VM on the real built guest under TCG: lifecycle, state guards, QMP helpers, balloon, snapshots, events."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import cast

import pytest

from vlab.errors import StateError, VlabError
from vlab.host.procfs import start_time as process_start_time
from vlab.qemu import VM, VMConfig, VMState
from vlab.qemu.vm import GuestPanicked

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_start_run_pause_resume_stop_walks_through_the_states(config: VMConfig) -> None:
    vm = VM(config)
    assert vm.state is VMState.CREATED and vm.pid is None
    vm.start()
    try:
        assert cast(VMState, vm.state) is VMState.RUNNING  # cast: mypy still holds the CREATED asserted before start()
        assert vm.status() == "running"
        assert vm.boot_seconds is not None and vm.boot_attempts >= 1
        result = vm.console.run("uname -s; cat /proc/sys/kernel/hostname")
        assert (result.output, result.status) == ("Linux\nvlab\n", 0)
        vm.pause()
        assert (vm.state, vm.status()) == (VMState.PAUSED, "paused")
        vm.resume()
        assert (vm.state, vm.status()) == (VMState.RUNNING, "running")
        pid = vm.pid
        assert pid is not None
    finally:
        how = vm.stop()
    assert how == "powerdown"  # the guest's acpid honoured the ACPI power button
    assert vm.state is VMState.STOPPED
    assert not os.path.exists(f"/proc/{pid}")
    assert vm.stop() == "not running"  # idempotent


def test_operations_in_the_wrong_state_raise_state_error(config: VMConfig) -> None:
    vm = VM(config)
    with pytest.raises(StateError) as caught:
        vm.pause()
    assert caught.value.state == "created" and "running" in caught.value.allowed
    assert caught.value.fix == "call vm.start() first"
    with pytest.raises(StateError):
        _ = vm.console
    with pytest.raises(StateError):
        vm.resume()


def test_console_output_exit_status_and_no_trailing_newline(shared_vm: VM) -> None:
    console = shared_vm.console
    assert console.run("false").status == 1
    assert console.run("printf abc").output == "abc"
    assert console.run("echo a; echo b >&2").output == "a\nb\n"
    assert console.run("true").output == ""
    assert console.run("cd /proc && pwd").output == "/proc\n"
    assert console.run("pwd").output == "/proc\n"  # same shell: state persists between commands
    assert console.run("echo 'quotes \"both\" kinds'").output == 'quotes "both" kinds\n'


def test_console_timeout_names_the_command_and_shows_the_tail(shared_vm: VM) -> None:
    shared_vm.console.run("echo before-the-slow-one")
    with pytest.raises(VlabError) as caught:
        shared_vm.console.run("sleep 3", timeout=0.5)
    assert caught.value.value == "sleep 3" and "console tail" in str(caught.value)
    assert "before-the-slow-one" in str(caught.value)
    assert shared_vm.console.run("echo after").output == "after\n"  # interrupted: no need to wait for it


def test_exit_in_the_console_shell_is_reported_and_the_console_recovers(shared_vm: VM) -> None:
    with pytest.raises(VlabError, match="shell exited"):
        shared_vm.console.run("exit 3")
    assert shared_vm.console.run("sh -c 'exit 3'").status == 3
    assert shared_vm.console.run("echo fine").output == "fine\n"


def test_a_shell_that_dies_while_the_console_resyncs_is_replaced_and_answers(shared_vm: VM) -> None:
    # CI once saw the guest's ash crash ("double free") right after a timed-out command: init started a new
    # shell, which dropped the one question the console asked while it started
    with pytest.raises(VlabError):
        shared_vm.console.run("trap '' INT; sleep 1.5; kill -9 $$", timeout=0.3)
    assert shared_vm.console.run("echo fine").output == "fine\n"
    assert "fine" not in shared_vm.console.run("true").output  # the new shell does not echo input


def test_vcpus_report_host_threads_of_the_qemu_process(shared_vm: VM) -> None:
    cpus = shared_vm.vcpus()
    assert [cpu.index for cpu in cpus] == [0]
    assert os.path.exists(f"/proc/{shared_vm.pid}/task/{cpus[0].thread_id}")


def test_memory_and_host_sample(shared_vm: VM) -> None:
    memory = shared_vm.memory()
    assert memory.configured == 256 * 1024 * 1024
    assert memory.balloon_actual is not None and memory.balloon_actual <= memory.configured
    assert memory.host_rss > 0
    first = shared_vm.host_sample()
    shared_vm.console.run("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
    second = shared_vm.host_sample()
    assert second.vcpu_seconds[0] > first.vcpu_seconds[0]  # the busy loop ran on vCPU 0's host thread


def test_the_guest_clock_stands_still_while_the_vm_is_paused(vm: VM) -> None:
    vm.pause()
    try:
        frozen = vm.guest_clock()
        time.sleep(2.2)
        assert vm.guest_clock() == frozen  # whole seconds: more than two have passed on the host
    finally:
        vm.resume()
    time.sleep(1.2)
    assert vm.guest_clock() >= frozen + 1
    vm.stop()
    with pytest.raises(StateError):
        vm.guest_clock()
    with pytest.raises(VlabError) as caught:
        VM(VMConfig()).guest_clock(timeout=-1)
    assert caught.value.field == "timeout"


def test_any_qmp_command_and_refused_commands(shared_vm: VM) -> None:
    assert shared_vm.qmp("query-version")["qemu"]["major"] >= 7
    assert shared_vm.qmp("human-monitor-command", command_line="info status").startswith("VM status")
    assert shared_vm.qmp("human-monitor-command", {"command-line": "info status"}).startswith("VM status")
    with pytest.raises(VlabError) as caught:
        shared_vm.qmp("no-such-command")
    assert caught.value.field == "no-such-command" and "refused" in caught.value.problem


def test_async_qmp_and_sync_api_inside_a_running_event_loop(shared_vm: VM) -> None:
    async def notebook_cell() -> tuple[str, str]:
        # Jupyter runs cells inside a loop: the sync API must not need (or break) it
        sync_status = shared_vm.status()
        async_status = (await shared_vm.aqmp("query-status"))["status"]
        return sync_status, async_status

    assert asyncio.run(notebook_cell()) == ("running", "running")


def test_events_are_recorded_oldest_first(shared_vm: VM) -> None:
    cursor = shared_vm.event_cursor()
    shared_vm.pause()
    shared_vm.resume()
    assert [event.name for event in shared_vm.events(cursor)] == ["STOP", "RESUME"]
    assert shared_vm.wait_event("RESUME", since=cursor).timestamp > 0
    with pytest.raises(VlabError, match="no SHUTDOWN event"):
        shared_vm.wait_event("SHUTDOWN", timeout=0.2, since=cursor)
    threading.Timer(0.2, shared_vm.pause).start()
    assert [event.name for event in shared_vm.iter_events(timeout=2)] == ["STOP"]  # ends after 2 s of silence
    shared_vm.resume()


def test_balloon_shrinks_the_guest_and_emits_events(vm: VM) -> None:
    cursor = vm.event_cursor()
    assert vm.balloon("128M") == 128
    assert vm.memory().balloon_actual == 128 * 1024 * 1024
    assert vm.wait_event("BALLOON_CHANGE", since=cursor).data["actual"] <= 256 * 1024 * 1024
    guest_total_kib = int(vm.console.run("awk '/MemTotal/ {print $2}' /proc/meminfo").output)
    assert guest_total_kib < 140 * 1024
    assert vm.balloon(256) == 256
    with pytest.raises(VlabError, match="cannot exceed"):
        vm.balloon("1G")


def test_snapshot_save_and_restore_brings_back_guest_memory(vm: VM) -> None:
    vm.console.run("echo before > /tmp/state")
    vm.snapshot_save("one")
    assert vm.snapshots() == ["one"]
    vm.console.run("echo after > /tmp/state")
    vm.snapshot_load("one")
    assert vm.state is VMState.RUNNING
    assert vm.console.run("cat /tmp/state").output == "before\n"
    with pytest.raises(VlabError, match="no snapshot"):
        vm.snapshot_load("two")
    vm.snapshot_delete("one")
    assert vm.snapshots() == []


def test_guest_poweroff_is_noticed_and_resources_released(vm: VM) -> None:
    workdir = vm.workdir
    assert workdir is not None and workdir.exists()
    vm.console.send("poweroff -f\n")
    deadline = time.monotonic() + 10
    while vm.state is VMState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vm.state is VMState.STOPPED and vm.stopped_by == "exited"
    assert not workdir.exists()
    with pytest.raises(StateError):
        vm.status()


def test_stop_escalates_past_a_guest_that_ignores_the_power_button(vm: VM) -> None:
    vm.console.run("killall acpid")  # now the ACPI power button does nothing
    started = time.monotonic()
    assert vm.stop(timeout=1.0) == "quit"
    assert time.monotonic() - started < 3


def test_two_vms_at_once_are_independent(config: VMConfig) -> None:
    with VM(config.replace(name="one")) as one, VM(config.replace(name="two")) as two:
        assert one.pid != two.pid
        assert one.console.run("hostname").output == "one\n"
        assert two.console.run("hostname").output == "two\n"
        one.pause()
        assert (one.status(), two.status()) == ("paused", "running")


def test_context_manager_stops_on_exception(config: VMConfig) -> None:
    with pytest.raises(RuntimeError), VM(config) as vm:
        pid, start = vm.pid, process_start_time(vm.pid or 0)
        raise RuntimeError("lab code failed")
    assert vm.state is VMState.STOPPED
    assert pid is not None and process_start_time(pid) != start


def test_bad_extra_argument_fails_with_qemu_stderr(config: VMConfig) -> None:
    vm = VM(config.replace(extra_args=("-device", "no-such-device")))
    with pytest.raises(VlabError) as caught:
        vm.start(timeout=10)
    assert "no-such-device" in str(caught.value)
    assert vm.state is VMState.FAILED


def test_boot_timeout_retries_then_reports_console_tail(config: VMConfig) -> None:
    vm = VM(config.replace(extra_args=("-S",)))  # vCPUs never start: the ready marker cannot come
    started = time.monotonic()
    with pytest.raises(VlabError) as caught:
        vm.start(timeout=2, retries=1)
    assert vm.boot_attempts == 2
    assert time.monotonic() - started < 10
    assert "did not print VLAB-READY" in caught.value.problem
    assert "the console printed nothing" in str(caught.value)
    assert vm.state is VMState.FAILED and vm.pid is not None and not os.path.exists(f"/proc/{vm.pid}")


def test_guest_panicking_during_boot_is_retried_then_fails_fast_with_console_tail(
    guest_images: tuple[Path, Path],
) -> None:
    # cold: what is tested is the cold boot's retry (a template of this guest cannot be built either)
    vm = VM(VMConfig(accel="tcg", append="console=ttyS0 rdinit=/nonexistent panic=-1", cold_boot=True))
    started = time.monotonic()
    with pytest.raises(GuestPanicked) as caught:
        vm.start(timeout=40, retries=1)
    # QEMU exited on each panic: the two attempts together end well before one of them would time out twice
    assert time.monotonic() - started < 2 * 40 * 0.75
    assert vm.boot_attempts == 2
    assert "panicked" in caught.value.problem
    assert "Kernel panic" in str(caught.value)
    assert vm.state is VMState.FAILED


def test_start_with_progress_reports_each_boot_step(guest_images: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with VM(VMConfig(name="steps", accel="tcg", cold_boot=True)).start(progress=True) as vm:
        assert vm.state is VMState.RUNNING
    lines = capsys.readouterr().err.splitlines()  # no TTY, no notebook: one plain line per step
    assert lines[0] == "booting steps: [1/2] launching QEMU (tcg), attempt 1"
    assert lines[1] == "booting steps: [2/2] waiting for the guest's ready line"
    assert lines[2].startswith("booting steps: done in ")


def test_q35_machine_boots_and_runs_a_command(guest_images: tuple[Path, Path]) -> None:
    with VM(VMConfig(name="q35", machine="q35", accel="tcg", cold_boot=True)) as vm:  # the kernel boots on q35
        assert "-M" in vm.argv and vm.argv[vm.argv.index("-M") + 1].split(",")[0] == "q35"
        result = vm.console.run("cat /proc/cmdline")
        assert result.status == 0 and "vlab.hostname=q35" in result.output
        assert vm.status() == "running"
