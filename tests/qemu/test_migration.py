"""Live migration between two local QEMUs: figures, a dirtying workload, knobs, and refusal of mismatches."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu import VM, VMConfig, VMState

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_migration_moves_the_running_guest_and_reports_figures(vm: VM, config: VMConfig) -> None:
    vm.console.run("echo still-me > /tmp/mark")
    destination = VM(config)
    try:
        result = vm.migrate_to(destination)
        assert result.status == "completed"
        assert destination.state is VMState.RUNNING and destination.status() == "running"
        assert vm.state is VMState.PAUSED and vm.status() == "postmigrate"
        assert destination.console.run("cat /tmp/mark").output == "still-me\n"
        assert result.total_time_ms > 0 and result.downtime_ms >= 0
        assert result.ram_total_bytes >= 256 * 1024 * 1024
        assert 0 < result.transferred_bytes <= 2 * result.ram_total_bytes
        assert result.dirty_sync_count >= 2
        assert (result.downtime_limit_ms, result.bandwidth) == (300, 128 * 1024 * 1024)  # QEMU 7.2 defaults
    finally:
        destination.kill()


def test_dirtying_workload_and_knobs_show_in_the_result(vm: VM, config: VMConfig) -> None:
    vm.console.run("memdirty 16 1000 > /dev/null &")
    destination = VM(config)
    try:
        result = vm.migrate_to(destination, downtime_limit_ms=50, bandwidth=512 * 1024 * 1024)
        assert (result.downtime_limit_ms, result.bandwidth) == (50, 512 * 1024 * 1024)
        assert result.raw["ram"]["dirty-sync-count"] == result.dirty_sync_count >= 2
        # Only QEMU's figures are checked here, not the guest after the move: under TCG (QEMU 7.2) a guest
        # that keeps dirtying memory sometimes arrives with a corrupted kernel (writes through cached TLB
        # entries escape dirty tracking; see VM.migrate_to). The test below checks the guest with pti=on.
    finally:
        destination.kill()


def test_busy_guest_booted_with_pti_arrives_healthy(guest_images: tuple[Path, Path]) -> None:
    config = VMConfig(accel="tcg", append="console=ttyS0 quiet panic=-1 pti=on")
    with VM(config) as source:
        source.console.run("memdirty 64 20000 > /dev/null &")
        destination = VM(config)
        try:
            source.migrate_to(destination)
            time.sleep(1.0)  # a corrupted guest kernel panics within a second of arriving
            assert destination.console.run("pidof memdirty").ok  # alive, and the workload came along
        finally:
            destination.kill()


def test_destination_must_match_and_be_fresh(vm: VM, config: VMConfig) -> None:
    with pytest.raises(VlabError) as caught:
        vm.migrate_to(VM(config.replace(mem=128)))
    assert caught.value.field == "mem"
    with pytest.raises(VlabError, match="cannot migrate into itself"):
        vm.migrate_to(vm)
    with VM(config) as running, pytest.raises(VlabError, match="be a migration destination"):
        vm.migrate_to(running)


def test_migration_progress_reports_rounds(guest_images: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = VMConfig(name="mprog", accel="tcg", mem=128)
    with VM(config) as source:
        destination = VM(config)
        try:
            result = source.migrate_to(destination, progress=True)
        finally:
            destination.stop()
    lines = capsys.readouterr().err.splitlines()
    rounds = [line for line in lines if line.startswith("migrating mprog: round ")]
    assert rounds and all(re.fullmatch(r"migrating mprog: round \d+: [\d.]+ MiB left to send", r) for r in rounds)
    assert len(rounds) <= result.dirty_sync_count + 1  # one line per new round, not per poll
    assert lines[-1].startswith("migrating mprog: done in ")


def test_a_poll_that_runs_out_of_the_last_moments_is_the_migration_timeout() -> None:
    """A stand-in for the source's QMP (the race cannot be produced on demand: the deadline passes while a
    ``query-migrate`` has only a fraction of a millisecond left, so QMP gives up first). It must end as the
    migration's timeout, cancelled, not as a QMP error: lab 07's run that cannot converge failed so once."""
    from vlab.qemu.migration import MigrationTimeout, _wait_source

    sent: list[str] = []
    deadline = time.monotonic() + 0.05

    def source(command: str, args: object = None) -> dict[str, str]:
        sent.append(command)
        if command == "query-migrate" and len(sent) > 1:
            time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
            raise VlabError("QEMU did not answer within 0.000245511 s", field="query-migrate")
        return {"status": "active"}

    with pytest.raises(MigrationTimeout, match="did not complete within 1 s"):
        _wait_source(source, deadline, 1.0, None)
    assert sent[-1] == "migrate_cancel"
