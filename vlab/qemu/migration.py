"""Live migration between two local QEMU processes, and the figures a lab plots from it.

The destination QEMU is started with ``-incoming unix:<its workdir>/mig.sock``
and waits in the ``inmigrate`` state; the source runs QMP ``migrate`` to that
socket and is polled with ``query-migrate`` until it reports ``completed`` (or
``failed``). The source can say ``completed`` while the destination is still
``inmigrate``, so the destination is polled too, until it leaves that state:
only then is the guest really running on the other side.

The result (:class:`MigrationResult`) carries QEMU's own figures — total time,
downtime, bytes transferred, dirty-sync rounds — and the parameters that shaped
them (downtime limit, bandwidth cap), so labs can relate one to the other.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vlab.errors import VlabError

__all__ = ["MigrationResult", "MigrationParameters", "run_migration", "set_parameters"]

_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class MigrationParameters:
    """Migration knobs: ``downtime_limit_ms`` (max pause allowed at switch-over) and ``bandwidth`` (bytes/s)."""

    downtime_limit_ms: int
    bandwidth: int


@dataclass(frozen=True)
class MigrationResult:
    """What a live migration cost, as QEMU measured it (times in ms, sizes in bytes).

    :ivar status: ``completed`` (anything else raises).
    :ivar total_time_ms: from ``migrate`` to completion, on the source.
    :ivar downtime_ms: how long the guest was paused at switch-over.
    :ivar setup_time_ms: time before the first RAM page was sent.
    :ivar transferred_bytes: RAM bytes sent (pages dirtied during the copy are sent again).
    :ivar ram_total_bytes: the guest's RAM size.
    :ivar dirty_sync_count: dirty-bitmap synchronisations = pre-copy rounds.
    :ivar downtime_limit_ms: the configured downtime limit.
    :ivar bandwidth: the configured bandwidth cap, bytes/s.
    :ivar destination_wait_ms: time after the source's ``completed`` until the destination left ``inmigrate``.
    :ivar wall_seconds: wall-clock time of the whole call, seen from Python.
    :ivar raw: the source's last ``query-migrate`` reply.
    """

    status: str
    total_time_ms: int
    downtime_ms: int
    setup_time_ms: int
    transferred_bytes: int
    ram_total_bytes: int
    dirty_sync_count: int
    downtime_limit_ms: int
    bandwidth: int
    destination_wait_ms: float
    wall_seconds: float
    raw: Mapping[str, Any]


QmpCall = Callable[..., Any]
#: Called with each ``query-migrate`` reply while the migration runs (e.g. to show progress).
PollHook = Callable[[Mapping[str, Any]], None]


class MigrationTimeout(VlabError):
    """The migration did not complete in time (it was cancelled): typically it did not converge."""


def set_parameters(source_qmp: QmpCall, downtime_limit_ms: int | None, bandwidth: int | None) -> MigrationParameters:
    """Apply the optional knobs on the source and read back what is in force."""
    changes: dict[str, int] = {}
    if downtime_limit_ms is not None:
        changes["downtime-limit"] = int(downtime_limit_ms)
    if bandwidth is not None:
        changes["max-bandwidth"] = int(bandwidth)
    if changes:
        source_qmp("migrate-set-parameters", changes)
    params = source_qmp("query-migrate-parameters")
    return MigrationParameters(int(params["downtime-limit"]), int(params["max-bandwidth"]))


def run_migration(source_qmp: QmpCall, destination_qmp: QmpCall, uri: str, params: MigrationParameters,
                  timeout: float, on_poll: PollHook | None = None) -> MigrationResult:
    """Migrate to ``uri`` and wait for both sides; ``*_qmp(command, args=None)`` run QMP commands.

    :raises VlabError: if the migration fails or does not finish within ``timeout`` s.
    """
    started = time.monotonic()
    deadline = started + timeout
    source_qmp("migrate", {"uri": uri})
    info = _wait_source(source_qmp, deadline, timeout, on_poll)
    completed_at = time.monotonic()
    _wait_destination(destination_qmp, deadline, timeout)
    ram = info.get("ram", {})
    return MigrationResult(
        status=str(info["status"]),
        total_time_ms=int(info.get("total-time", 0)),
        downtime_ms=int(info.get("downtime", 0)),
        setup_time_ms=int(info.get("setup-time", 0)),
        transferred_bytes=int(ram.get("transferred", 0)),
        ram_total_bytes=int(ram.get("total", 0)),
        dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
        downtime_limit_ms=params.downtime_limit_ms,
        bandwidth=params.bandwidth,
        destination_wait_ms=(time.monotonic() - completed_at) * 1000,
        wall_seconds=time.monotonic() - started,
        raw=info,
    )


def _wait_source(source_qmp: QmpCall, deadline: float, timeout: float, on_poll: PollHook | None) -> dict[str, Any]:
    info: dict[str, Any] = {}
    while True:
        if time.monotonic() > deadline:  # checked before each poll: the poll itself gets only what is left
            with contextlib.suppress(VlabError):
                source_qmp("migrate_cancel")
            raise MigrationTimeout(f"the migration did not complete within {timeout:g} s (cancelled)",
                                   field="migrate", value=info.get("status"),
                                   fix="raise the bandwidth or downtime limit, or dirty memory more slowly",
                                   detail=str(info)[:2000])
        try:
            info = source_qmp("query-migrate")
        except VlabError:
            if time.monotonic() <= deadline:
                raise
            continue  # the poll had only the last moments left: that is the timeout, reported above
        if on_poll is not None:
            on_poll(info)
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise VlabError(f"the migration {status}", field="migrate", value=info.get("error-desc", status),
                            fix="check that both VMs have the same configuration", detail=str(info)[:2000])
        time.sleep(_POLL_SECONDS)


def _wait_destination(destination_qmp: QmpCall, deadline: float, timeout: float) -> None:
    while destination_qmp("query-status")["status"] == "inmigrate":
        if time.monotonic() > deadline:
            raise VlabError(f"the destination stayed 'inmigrate' for more than {timeout:g} s", field="migrate",
                            fix="check the destination's console and QEMU stderr")
        time.sleep(_POLL_SECONDS)
