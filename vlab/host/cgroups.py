"""Control groups: what the host offers, and a small handle to use them.

Hosts differ: here cgroup v1 has the ``cpu``, ``memory`` and ``pids``
controllers while the v2 hierarchy is mounted with none delegated; a systemd
desktop is the reverse; Binder allows neither. :func:`detect_cgroups` says which
version has which controller, and :class:`Cgroup` creates a child group *under
the current process's own group* (a process may sit in a non-root group it can
write below, but not beside) with whichever version provides each controller.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from vlab.errors import VlabError

__all__ = ["CONTROLLERS", "CgroupSupport", "detect_cgroups", "Cgroup"]

#: The controllers vlab uses.
CONTROLLERS = ("cpu", "memory", "pids")


@dataclass(frozen=True)
class CgroupSupport:
    """Which controllers each cgroup version offers to this process (writable), and where."""

    v1: dict[str, Path] = field(default_factory=dict)
    v2: dict[str, Path] = field(default_factory=dict)

    def where(self, controller: str) -> tuple[int, Path] | None:
        """(version, directory of this process's group) providing ``controller``, v1 preferred, or None."""
        if controller in self.v1:
            return 1, self.v1[controller]
        if controller in self.v2:
            return 2, self.v2[controller]
        return None

    @property
    def usable(self) -> list[str]:
        return [c for c in CONTROLLERS if self.where(c)]

    def describe(self) -> str:
        v1 = ", ".join(sorted(self.v1)) or "none"
        v2 = ", ".join(sorted(self.v2)) or "none"
        return f"cgroup v1: {v1}; cgroup v2: {v2}"


def _own_groups(root: Path) -> dict[str, str]:
    """controller (or '' for v2) -> this process's group path, from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    try:
        lines = (root / "proc" / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            groups[name] = path
    return groups


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _v2_mount(fs: Path) -> Path | None:
    for candidate in (fs / "unified", fs):
        if (candidate / "cgroup.controllers").exists():
            return candidate
    return None


def detect_cgroups(root: Path = Path("/")) -> CgroupSupport:
    """Probe ``root``'s cgroup mounts for the controllers in :data:`CONTROLLERS` this process can use."""
    fs = root / "sys" / "fs" / "cgroup"
    own = _own_groups(root)
    v1: dict[str, Path] = {}
    for name in CONTROLLERS:
        mount = fs / name
        if (mount / "tasks").exists():  # only v1 hierarchies have a "tasks" file
            group = mount / own.get(name, "/").lstrip("/")
            if _writable_dir(group):
                v1[name] = group
    v2: dict[str, Path] = {}
    unified = _v2_mount(fs)
    if unified is not None:
        group = unified / own.get("", "/").lstrip("/")
        try:
            offered = set((group / "cgroup.controllers").read_text().split())
        except OSError:
            offered = set()
        for name in CONTROLLERS:
            if name in offered and _writable_dir(group):
                v2[name] = group
    return CgroupSupport(v1, v2)


class Cgroup:
    """A child control group holding some processes, removed by :meth:`remove` (or ``with``).

    :param name: the child group's name (created under this process's own group).
    :param controllers: the controllers needed; a VlabError names any the host lacks.
    :param required: if False, controllers the host lacks are left out instead (see :meth:`best_effort`).
    :param create: if False, only the controllers whose group already exists are taken (see :meth:`existing`).
    """

    def __init__(
        self,
        name: str,
        controllers: tuple[str, ...] = CONTROLLERS,
        support: CgroupSupport | None = None,
        *,
        required: bool = True,
        create: bool = True,
    ) -> None:
        support = support or detect_cgroups()
        self.name = name
        self.dirs: dict[str, tuple[int, Path]] = {}
        for controller in controllers:
            place = support.where(controller)
            if place is None:
                if not required:
                    continue
                raise VlabError(
                    f"this host offers no writable cgroup with the {controller} controller ({support.describe()})",
                    field="cgroup",
                    value=controller,
                    fix="run as root on a host with cgroup v1 controllers or a delegated v2 subtree; "
                    "labs skip this part where neither exists",
                )
            version, parent = place
            path = parent / name
            if not create:
                if path.is_dir():
                    self.dirs[controller] = (version, path)
                continue
            if version == 2:
                with contextlib.suppress(OSError):
                    (parent / "cgroup.subtree_control").write_text(f"+{controller}")
            path.mkdir(exist_ok=True)
            self.dirs[controller] = (version, path)

    @classmethod
    def best_effort(
        cls, name: str, controllers: tuple[str, ...] = CONTROLLERS, support: CgroupSupport | None = None
    ) -> Self | None:
        """The group with whichever of ``controllers`` the host (or ``support``) offers; None if none or refused."""
        try:
            group = cls(name, controllers, support, required=False)
        except OSError:
            return None
        return group if group.dirs else None

    @classmethod
    def existing(cls, name: str, controllers: tuple[str, ...] = CONTROLLERS) -> Self | None:
        """A group ``name`` created earlier (e.g. by a process that died) under this process's groups, if any."""
        group = cls(name, controllers, required=False, create=False)
        return group if group.dirs else None

    @property
    def paths(self) -> dict[str, Path]:
        """controller -> the group's directory."""
        return {controller: path for controller, (_, path) in self.dirs.items()}

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The ``cgroup.procs`` files a new process writes its pid to, to join every controller's group."""
        return tuple(str(path / "cgroup.procs") for path in self.paths.values())

    def members(self) -> set[int]:
        """PIDs of the processes in the group (any controller)."""
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in Path(procs).read_text().split())
        return found

    def _write(self, controller: str, v1_file: str, v2_file: str, value: str) -> None:
        version, path = self.dirs[controller]
        (path / (v1_file if version == 1 else v2_file)).write_text(value)

    def set_cpu_quota(self, fraction: float, period_us: int = 100_000) -> None:
        """Limit the group to ``fraction`` of one CPU per period (e.g. 0.2 = 20 %)."""
        quota = max(1000, int(fraction * period_us))
        version, path = self.dirs["cpu"]
        if version == 1:
            (path / "cpu.cfs_period_us").write_text(str(period_us))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (path / "cpu.max").write_text(f"{quota} {period_us}")

    def set_memory_limit(self, limit_bytes: int) -> None:
        """Limit memory, with no escape into swap where the host accounts it (v1 memory + swap = the limit,
        v2 swap = 0)."""
        self._write("memory", "memory.limit_in_bytes", "memory.max", str(limit_bytes))
        version, path = self.dirs["memory"]
        swap, value = ("memory.memsw.limit_in_bytes", str(limit_bytes)) if version == 1 else ("memory.swap.max", "0")
        if (path / swap).exists():
            (path / swap).write_text(value)

    def set_pids_max(self, count: int) -> None:
        self._write("pids", "pids.max", "pids.max", str(count))

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group, for every controller."""
        for version, path in self.dirs.values():
            (path / ("cgroup.procs" if version == 2 else "tasks")).write_text(str(pid))

    def add_thread(self, tid: int) -> None:
        """Move one thread (e.g. a QEMU vCPU thread) into the group.

        cgroup v1 places threads individually (``tasks``); v2 only in a *threaded* subtree (``cgroup.threads``),
        which this group becomes for the purpose.
        """
        for version, path in self.dirs.values():
            if version == 1:
                (path / "tasks").write_text(str(tid))
            else:
                with contextlib.suppress(OSError):
                    (path / "cgroup.type").write_text("threaded")
                (path / "cgroup.threads").write_text(str(tid))

    def release(self, ids: list[int]) -> None:
        """Move processes or threads back to the parent group (so that :meth:`remove` can succeed while they live)."""
        for version, path in self.dirs.values():
            target = path.parent / ("tasks" if version == 1 else "cgroup.threads")
            for member in ids:
                with contextlib.suppress(OSError):  # the thread may already have exited
                    target.write_text(str(member))

    def throttled_periods(self) -> int:
        """How many CFS periods the group was throttled in (0 when unknown)."""
        return self.counter("cpu", "cpu.stat", "nr_throttled")

    def counter(self, controller: str, filename: str, key: str | None = None) -> int:
        """A counter from a cgroup file: a single-value file (``key`` None) or a flat-keyed one such as
        ``pids.events`` (0 when the controller, file or key is absent)."""
        if controller not in self.dirs:
            return 0
        _, path = self.dirs[controller]
        with contextlib.suppress(OSError, ValueError):
            text = (path / filename).read_text()
            if key is None:
                return int(text.split()[0])
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        """Processes the memory limit killed (v1 ``memory.oom_control``, v2 ``memory.events``)."""
        name = "memory.oom_control" if self.dirs.get("memory", (1, Path()))[0] == 1 else "memory.events"
        return self.counter("memory", name, "oom_kill")

    def pids_refused(self) -> int:
        """Forks refused by the pids limit (v1/v2 ``pids.events``: ``max``)."""
        return self.counter("pids", "pids.events", "max")

    def remove(self, timeout: float = 2.0) -> None:
        """Remove the group's directories (waiting briefly for its processes to exit)."""
        deadline = time.monotonic() + timeout
        for _, path in self.dirs.values():
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
