"""The limits around every process that runs student code, and the sweep that ends them.

A student process (the notebook's kernel, the :class:`~vlab.grading.exports.StudentHost`) is
started as ``python -m vlab.grading.jail SPEC -- COMMAND...``; :func:`enter` applies the
:class:`JailSpec` to itself and then ``exec``\\ s the command, so the limits hold before any
student code runs:

* joins a :class:`Cgroup` (cgroup v1 ``memory``, ``pids``, ``cpu``, created under the
  grader's own cgroups, where the host allows it);
* a new network namespace with only ``lo`` (root only);
* rlimits: address space, CPU seconds, file size, no core dumps and, for a throw-away uid,
  the number of processes;
* as root, switches to a throw-away uid/gid that owns nothing but the working directory, so the
  student's code cannot read the bundle (mode 0600), other submissions' processes or the
  grader's memory.

:func:`sweep` kills everything left: members of the cgroup and every descendant of the grading
process (which is a child *subreaper*, so daemonized QEMU guests are re-parented to it instead
of escaping to init), and reports what it found.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlab.host.cgroups import Cgroup as HostCgroup

__all__ = [
    "Cgroup",
    "JailSpec",
    "ProcessInfo",
    "become_subreaper",
    "python_paths",
    "descendants",
    "enter",
    "remove_files_of",
    "survivors",
    "sweep",
]

_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 4096, 8192, 16384, 1 << 18
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessInfo:
    """A process found by a sweep."""

    pid: int
    command: str


@dataclass(frozen=True)
class JailSpec:
    """What :func:`enter` applies before exec'ing a student command.

    :param uid: switch to this uid/gid (root only); None keeps the current user.
    :param address_space_mb: RLIMIT_AS per process.
    :param cpu_seconds: RLIMIT_CPU per process.
    :param file_mb: RLIMIT_FSIZE.
    :param processes: RLIMIT_NPROC (only applied with a throw-away uid: it counts per user).
    :param cgroup_procs: ``cgroup.procs`` files to join.
    :param new_netns: unshare the network namespace.
    :param chown: paths to hand to ``uid`` before switching.
    :param workdir: directory to change to.
    :param hide: paths covered (in a private mount namespace) by an empty tmpfs or /dev/null.
    :param reveal: paths the throw-away uid must reach (the Python installation) although an
        ancestor is private (``/root`` is 0700): see :func:`_reveal`.
    """

    uid: int | None
    address_space_mb: int
    cpu_seconds: int
    file_mb: int
    processes: int
    cgroup_procs: tuple[str, ...] = ()
    new_netns: bool = False
    chown: tuple[str, ...] = ()
    workdir: str = "/"
    hide: tuple[str, ...] = ()
    reveal: tuple[str, ...] = ()

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped so that it runs inside this jail."""
        return [sys.executable, "-m", "vlab.grading.jail", json.dumps(asdict(self)), "--", *argv]


def _set_limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            resource.setrlimit(which, (hard, hard))


def _unshare_net() -> None:
    _libc_call("unshare", _CLONE_NEWNET)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False, capture_output=True)


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    encoded = [a.encode() if isinstance(a, str) else a for a in args]
    if getattr(libc, name)(*encoded) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{tuple(args)!r}: {os.strerror(errno)}")


def _private_ancestor(path: Path) -> Path | None:
    """The first ancestor of ``path`` that other users cannot traverse, if any."""
    for parent in reversed(path.parents):
        try:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        except OSError:
            return None
    return None


def _reveal(paths: Iterable[str], stage: Path) -> None:
    """Make ``paths`` reachable for another uid in this mount namespace only.

    For a private ancestor A (e.g. ``/root``) of a needed path A/C/...: bind A/C aside, cover A
    with an empty world-traversable tmpfs, recreate C in it and move the bind back. Everything
    else in A (e.g. ``/root/.config/vlab/grading-secret``) stays hidden.
    """
    for level in range(8):  # one private level at a time: /root, then a private dir inside it, ...
        groups: dict[Path, set[str]] = {}
        for raw in paths:
            path = Path(raw)
            ancestor = _private_ancestor(path)
            if ancestor is not None:
                groups.setdefault(ancestor, set()).add(path.relative_to(ancestor).parts[0])
        if not groups:
            return
        _reveal_level(groups, stage / str(level))


def _reveal_level(groups: dict[Path, set[str]], stage: Path) -> None:
    for number, (ancestor, children) in enumerate(sorted(groups.items())):
        staged = []
        for index, child in enumerate(sorted(children)):
            target = stage / f"{number}-{index}"
            target.mkdir(parents=True)
            _libc_call("mount", str(ancestor / child), str(target), None, _MS_BIND | _MS_REC, None)
            staged.append((child, target))
        _libc_call("mount", "tmpfs", str(ancestor), "tmpfs", 0, "mode=0755,size=64k")
        for child, target in staged:
            (ancestor / child).mkdir()
            _libc_call("mount", str(target), str(ancestor / child), None, _MS_MOVE, None)


def _hide(paths: Iterable[str]) -> None:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            _libc_call("mount", "tmpfs", str(path), "tmpfs", 0, "mode=0755,size=64k")
        elif path.exists():
            _libc_call("mount", "/dev/null", str(path), None, _MS_BIND, None)


def enter(spec: JailSpec, argv: Sequence[str]) -> None:
    """Apply ``spec`` to this process and exec ``argv`` (never returns)."""
    for procs in spec.cgroup_procs:
        with contextlib.suppress(OSError):  # the cgroup vanished or is not ours: rlimits still hold
            Path(procs).write_text(str(os.getpid()))
    if spec.new_netns:
        _unshare_net()
    if spec.hide or spec.reveal:
        _libc_call("unshare", _CLONE_NEWNS)
        _libc_call("mount", None, "/", None, _MS_REC | _MS_PRIVATE, None)
        _reveal(spec.reveal, Path(spec.workdir) / f".stage-{os.getpid()}")
        _hide(spec.hide)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_AS, spec.address_space_mb * 2**20)
    _set_limit(resource.RLIMIT_CPU, spec.cpu_seconds)
    _set_limit(resource.RLIMIT_FSIZE, spec.file_mb * 2**20)
    if spec.uid is not None:
        for path in spec.chown:
            os.chown(path, spec.uid, spec.uid)
        _set_limit(resource.RLIMIT_NPROC, spec.processes)
        os.setgroups([])
        os.setgid(spec.uid)
        os.setuid(spec.uid)
    # after the uid switch, which clears it: die with the grader even if it is killed
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.chdir(spec.workdir)
    os.execvp(argv[0], list(argv))


def python_paths() -> tuple[str, ...]:
    """What a student process needs to read: this Python installation, its packages, vlab and
    the guest-image cache (for labs that boot VMs)."""
    import vlab
    from vlab.paths import images_dir

    wanted = {sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), str(Path(vlab.__file__).parent)}
    if images_dir().is_dir():
        wanted.add(str(images_dir()))
    wanted.update(p for p in sys.path if p and os.path.isdir(p))
    return tuple(sorted(os.path.realpath(p) for p in wanted))


class Cgroup(HostCgroup):
    """The per-submission group (``memory``, ``pids``, ``cpu``) under the grader's own groups.

    :meth:`create` returns None where cgroups cannot be used (none offered, not root): the rlimits are then the only
    limits.
    """

    CONTROLLERS = ("memory", "pids", "cpu")

    @classmethod
    def create(cls, name: str, *, memory_mb: int, processes: int, cpu_percent: int) -> Cgroup | None:
        group = cls.best_effort(name, cls.CONTROLLERS)
        if group is None:
            return None
        try:
            if "memory" in group.dirs:
                group.set_memory_limit(memory_mb * 2**20)
            if "pids" in group.dirs:
                group.set_pids_max(processes)
            if "cpu" in group.dirs:
                group.set_cpu_quota(cpu_percent / 100)
        except OSError:
            group.remove()
            return None
        return group

    def remove(self, timeout: float = 1.0) -> None:
        """Remove the group's directories (after :func:`sweep` emptied it); a straggler leaves it behind."""
        with contextlib.suppress(OSError):
            super().remove(timeout)


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), fields[0]


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:300]


def descendants(root: int) -> set[int]:
    """Live (non-zombie) descendants of ``root``, found by walking /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                children.setdefault(stat[0], []).append(int(entry))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pids: Iterable[int]) -> set[int]:
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[1] != "Z"}


def survivors(cgroup: Cgroup | None, exclude: Iterable[int] = ()) -> list[ProcessInfo]:
    """Live processes in ``cgroup`` or below this process, but ``exclude`` (listed, not killed)."""
    found = descendants(os.getpid())
    if cgroup is not None:
        found |= cgroup.members()
    pids = _alive(found - set(exclude) - {os.getpid()})
    return [ProcessInfo(pid, _command(pid)) for pid in sorted(pids)]


def sweep(cgroup: Cgroup | None, *, exclude: Iterable[int] = (), rounds: int = 50) -> list[ProcessInfo]:
    """Kill every process in ``cgroup`` and every descendant of this process (but ``exclude``).

    Repeats until nothing is left (a fork bomb keeps forking while it is being killed) and reaps
    the zombies this process inherited. Returns what was alive at the first look.
    """
    skip = set(exclude) | {os.getpid()}

    def targets() -> set[int]:
        found = descendants(os.getpid())
        if cgroup is not None:
            found |= cgroup.members()
        return _alive(found - skip)

    report = survivors(cgroup, skip)
    for _ in range(rounds):
        pids = targets()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
        _reap()
    _reap()
    return report


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def remove_files_of(uid: int, places: Sequence[str] = ("/tmp", "/var/tmp", "/dev/shm")) -> list[str]:
    """Remove what a throw-away uid left in world-writable places; returns the paths removed."""
    removed: list[str] = []
    for place in places:
        try:
            entries = list(os.scandir(place))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed


def _main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m vlab.grading.jail SPEC_JSON -- COMMAND...", file=sys.stderr)
        return 2
    raw: dict[str, Any] = json.loads(argv[0])
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    spec = JailSpec(**fields)
    enter(spec, argv[2:])
    return 0  # not reached: enter() execs


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
