"""The one reader of ``/proc/<pid>/…``: process facts as typed values, ``None`` when the process is gone.

``/proc/<pid>/stat`` is parsed here only: the command name (field 2) may contain spaces and parentheses, so
the fields after it are found after the *last* ``)``. Everything else in vlab (QEMU's RSS and vCPU times,
the orphan sweeper's identity checks, process-tree walks) asks this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcStat",
    "read_stat",
    "start_time",
    "alive",
    "status_kib",
    "rss_bytes",
    "cmdline",
    "environ",
    "exe",
    "owner_uid",
    "descendants",
    "meminfo_kib",
    "CLOCK_TICKS",
]

#: Clock ticks per second (the unit of the times in ``stat``).
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>[/task/<tid>]/stat`` vlab uses (times in clock ticks)."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    start_time: int

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU time in seconds."""
        return (self.utime + self.stime) / CLOCK_TICKS


def _base(pid: int, tid: int | None, root: Path) -> Path:
    return root / str(pid) if tid is None else root / str(pid) / "task" / str(tid)


def read_stat(pid: int, tid: int | None = None, *, root: Path = Path("/proc")) -> ProcStat | None:
    """``stat`` of a process (or of one of its threads); None if it does not exist (any more)."""
    try:
        text = (_base(pid, tid, root) / "stat").read_text()
        head, tail = text.rsplit(")", 1)
        fields = tail.split()
        return ProcStat(int(head.split("(", 1)[0]), head.split("(", 1)[1], fields[0], int(fields[1]),
                        int(fields[11]), int(fields[12]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, an identity that pid reuse cannot fake."""
    stat = read_stat(pid)
    return None if stat is None else stat.start_time


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has exited; only its parent has not reaped it)."""
    stat = read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def _kib_line(path: str, key: str) -> int | None:
    """The number on the ``key:`` line of a ``/proc`` file whose lines read ``Key:   123 kB``."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``…); None if absent or gone."""
    return _kib_line(f"/proc/{pid}/status", key)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (None if it is gone)."""
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` (None if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def environ(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` started with (readable only for our own processes; None otherwise)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def exe(pid: int) -> str | None:
    """The executable of ``pid`` (None if gone or not ours to see)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def owner_uid(pid: int) -> int | None:
    """The uid owning ``pid`` (None if gone)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def descendants(pid: int, *, include_zombies: bool = False) -> set[int]:
    """Every process below ``pid`` in the process tree (one walk over ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and (include_zombies or stat.state != "Z"):
                children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def meminfo_kib(key: str = "MemAvailable") -> int | None:
    """A line of ``/proc/meminfo`` in kB (None if absent)."""
    return _kib_line("/proc/meminfo", key)
