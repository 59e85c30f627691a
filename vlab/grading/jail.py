"""The jail around every process that runs student code, and the sweep that ends them.

A student process (the notebook's kernel, the hosts of :mod:`vlab.grading.hosts`) is
started as ``python -I -m vlab.grading.jail SPEC -- COMMAND...`` from a root-owned directory;
:func:`enter` applies the :class:`JailSpec` and then ``exec``\\ s the command, so every limit holds
before any student code runs. By :attr:`JailSpec.mode`:

``root``
    joins the submission's :class:`Cgroup` (memory, pids, cpu, freezer), enters new mount, pid,
    network, IPC and UTS namespaces, builds the allow-list root (:mod:`vlab.grading.mounts`),
    switches to a throw-away uid/gid that owns nothing on the host, sets ``no_new_privs``.
``userns``
    the same namespaces inside a new *user* namespace (for an instructor without root, where the
    host allows unprivileged user namespaces): the student is "root" of a namespace that owns
    nothing, with every capability dropped before the exec.
``none``
    rlimits only (``vlab grade --no-isolation``: recorded in the gradebook).

The pid namespace is how everything is found and killed: the first process in it is the jail's
child; when it dies the kernel kills every other process of the namespace (a daemonized QEMU
included). :func:`sweep` kills the members of the submission's cgroup as well (frozen first, so a
fork bomb cannot outrun it) -- by membership, never by walking ``/proc`` states.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlab.grading.mounts import build_root, libc_call, remount_proc
from vlab.host.cgroups import Cgroup as HostCgroup
from vlab.host.cgroups import CgroupSupport

__all__ = [
    "MODES",
    "PEER_FD",
    "Cgroup",
    "JailSpec",
    "ProcessInfo",
    "become_subreaper",
    "enter",
    "inner_pid",
    "jail_command",
    "namespace_members",
    "sweep",
    "userns_available",
]

#: The file descriptor of the socket between a jail's command and its ``inner`` command.
PEER_FD = 3

#: Isolation modes, strongest first.
MODES = ("root", "userns", "none")

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 1, 24, 28
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38
_SECBIT_NOROOT_LOCKED_ALL = 0x2F  # NOROOT, NO_SETUID_FIXUP and their locks: uid 0 gains no capability on exec
_SIOCSIFFLAGS, _IFF_UP_LOOPBACK_RUNNING = 0x8914, 0x1 | 0x8 | 0x40


@dataclass(frozen=True)
class ProcessInfo:
    """A process found by a sweep."""

    pid: int
    command: str


@dataclass(frozen=True)
class JailSpec:
    """What :func:`enter` applies before exec'ing a student command.

    :param mode: one of :data:`MODES`.
    :param uid: the throw-away uid/gid (mode ``root``).
    :param address_space_mb: RLIMIT_AS per process.
    :param cpu_seconds: RLIMIT_CPU per process.
    :param file_mb: RLIMIT_FSIZE.
    :param processes: RLIMIT_NPROC (mode ``root``: it counts per user, and the uid is the submission's own).
    :param cgroup_procs: ``cgroup.procs`` files to join (mode ``root``).
    :param workdir: the submission's directory: bound read-write, the cwd.
    :param writable: other directories bound read-write (the kernel's connection directory).
    :param readonly: what else the student may read: the Python environment, vlab, the guest images.
    :param stage: an empty directory only the grader can reach, where the new root is assembled.
    :param inner: a second command (the student host, beside the helper host that is the first): it runs in a
        pid namespace nested in the jail's, with its own ``/proc``, so it can neither see nor signal the first,
        which sees it. The two are connected by a socket, :data:`PEER_FD` in both.
    """

    mode: str
    uid: int | None
    address_space_mb: int
    cpu_seconds: int
    file_mb: int
    processes: int
    cgroup_procs: tuple[str, ...] = ()
    workdir: str = "/"
    writable: tuple[str, ...] = ()
    readonly: tuple[str, ...] = ()
    stage: str = ""
    inner: tuple[str, ...] = ()

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped so that it runs inside this jail."""
        return jail_command(json.dumps(asdict(self)), argv)


def jail_command(spec_json: str, argv: Sequence[str]) -> list[str]:
    """The isolated interpreter (``-I``: no cwd, no PYTHON* variables, no user site) that applies a jail."""
    return [sys.executable, "-I", "-m", "vlab.grading.jail", spec_json, "--", *argv]


def _prctl(option: int, value: int) -> int:
    return libc_call("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _set_limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            resource.setrlimit(which, (hard, hard))


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", _IFF_UP_LOOPBACK_RUNNING))


def _map_own_ids() -> None:
    """In a fresh user namespace: this process's uid/gid become 0 there (unprivileged: one id each)."""
    uid, gid = os.getuid(), os.getgid()
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def _drop_capabilities() -> None:
    """Namespace root without any capability: empty bounding set, exec never grants any, no_new_privs."""
    for cap in range(64):
        with contextlib.suppress(OSError):
            _prctl(_PR_CAPBSET_DROP, cap)
    _prctl(_PR_SET_SECUREBITS, _SECBIT_NOROOT_LOCKED_ALL)


def userns_available() -> bool:
    """Whether this process may create a user namespace with mount, pid and network namespaces in it."""
    pid = os.fork()
    if pid == 0:  # probe in a child: unshare cannot be undone
        code = 1
        try:
            libc_call("unshare", _CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET)
            _map_own_ids()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _relay_and_wait(child: int) -> None:
    """The jail's first process: pass termination on to the namespace's init, exit as it exits.

    SIGINT is not relayed: the kernel manager signals the whole process group, which already holds the kernel.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, lambda signum, _frame: os.kill(child, signal.SIGKILL))
    os._exit(_wait_for(child))


def _wait_for(child: int) -> int:
    """Reap every child (pid 1 inherits the orphans) until ``child`` exits; its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status) & 0xFF


def _drop_privileges(spec: JailSpec) -> None:
    if spec.mode == "root" and spec.uid is not None:
        _set_limit(resource.RLIMIT_NPROC, spec.processes)
        os.setgroups([])
        os.setresgid(spec.uid, spec.uid, spec.uid)
        os.setresuid(spec.uid, spec.uid, spec.uid)
    elif spec.mode == "userns":
        _drop_capabilities()
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary or file capability raises the student's rights
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # again: a uid change clears it


def enter(spec: JailSpec, argv: Sequence[str]) -> None:
    """Apply ``spec`` to this process and exec ``argv`` (never returns).

    With namespaces, three processes: this one (outside, what the kernel manager sees), the new pid
    namespace's init (builds the root, reaps, ends the namespace when the command exits) and the
    command itself (pid 2: a student cannot signal init, and init's death kills everything).
    """
    if spec.mode not in MODES:
        raise ValueError(f"unknown jail mode {spec.mode!r}")
    if spec.mode == "userns" and os.getuid() == 0:  # uid 0 would map to the host's root: its files are its own
        raise ValueError("the userns mode is for an unprivileged grader; root uses the root mode")
    for procs in spec.cgroup_procs:
        with contextlib.suppress(OSError):  # the cgroup vanished or is not ours: rlimits still hold
            Path(procs).write_text(str(os.getpid()))
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the grader, even if it is killed
    peer = socket.socketpair() if spec.inner else None
    if spec.mode != "none":
        flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
        if spec.mode == "userns":
            flags |= _CLONE_NEWUSER
        libc_call("unshare", flags)
        if spec.mode == "userns":
            _map_own_ids()
        init = os.fork()
        if init:
            _relay_and_wait(init)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        build_root(spec.stage, workdir=spec.workdir, writable=spec.writable, readonly=spec.readonly)
        _loopback_up()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        command = os.fork()
        if command:
            if peer is not None:
                if os.fork() == 0:
                    try:
                        _run_inner(spec, peer[1], peer[0])
                    finally:
                        os._exit(1)  # it failed before its exec: never back into the first command's path
                _close(peer)  # only the two hosts hold the socket: when one dies, the other reads its end
            os._exit(_wait_for(command))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.pop("JPY_PARENT_PID", None)  # a pid from outside the namespace: ipykernel would poll it
    elif peer is not None and os.fork() == 0:
        try:
            _exec_jailed(spec, spec.inner, peer[1], peer[0], inner=True)
        finally:
            os._exit(1)
    _exec_jailed(spec, argv, peer[0] if peer else None, peer[1] if peer else None)


def _run_inner(spec: JailSpec, mine: socket.socket, theirs: socket.socket) -> None:
    """The inner command, from the jail's init: in a nested pid namespace with a ``/proc`` of its own."""
    libc_call("unshare", _CLONE_NEWPID | _CLONE_NEWNS)
    inner_init = os.fork()  # the first process of the nested namespace: it ends it when the command exits
    if inner_init:
        _close((mine, theirs))
        os._exit(_wait_for(inner_init))
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    remount_proc()
    command = os.fork()
    if command:
        _close((mine, theirs))
        os._exit(_wait_for(command))
    _exec_jailed(spec, spec.inner, mine, theirs, inner=True)


def _close(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _exec_jailed(
    spec: JailSpec, argv: Sequence[str], peer: socket.socket | None, other: socket.socket | None, inner: bool = False
) -> None:
    """Limits, privileges dropped, the peer socket on :data:`PEER_FD`, then exec (never returns).

    :param inner: the inner command: its stdin and stdout, the grader's pipes to the first command, become
        ``/dev/null`` and its stderr (it talks only through the peer socket), in a session of its own.
    """
    if inner:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(2, 1)
        os.close(null)
        os.setsid()  # a process group of its own: kill(0) reaches a group's members in every pid namespace
    if other is not None:
        other.close()
    if peer is not None:
        if peer.fileno() == PEER_FD:
            os.set_inheritable(PEER_FD, True)  # dup2 onto itself would leave it close-on-exec
        else:
            os.dup2(peer.fileno(), PEER_FD, inheritable=True)
            peer.close()
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_AS, spec.address_space_mb * 2**20)
    _set_limit(resource.RLIMIT_CPU, spec.cpu_seconds)
    _set_limit(resource.RLIMIT_FSIZE, spec.file_mb * 2**20)
    _drop_privileges(spec)
    os.chdir(spec.workdir)
    os.execvp(argv[0], list(argv))


class Cgroup(HostCgroup):
    """The per-submission group (``memory``, ``pids``, ``cpu``, and a freezer) under the grader's own groups.

    :meth:`create` returns None where cgroups cannot be used (none offered, not root): the pid namespace and
    the rlimits are then the only bounds.
    """

    CONTROLLERS = ("memory", "pids", "cpu")

    @classmethod
    def create(
        cls, name: str, *, memory_mb: int, processes: int, cpu_percent: int, support: CgroupSupport | None = None
    ) -> Cgroup | None:
        """The group with its limits set, under the hierarchies ``support`` names (default: this host's)."""
        group = cls.best_effort(name, cls.CONTROLLERS, support)
        if group is None:
            return None
        try:
            if "memory" in group.dirs:
                group.set_memory_limit(memory_mb * 2**20)
            if "pids" in group.dirs:
                group.set_pids_max(processes)
            if "cpu" in group.dirs:
                group.set_cpu_quota(cpu_percent / 100)
            group._add_freezer()
        except OSError:
            group.remove()
            return None
        return group

    def _freezer_v1(self) -> Path | None:
        own = next((line.split(":", 2)[2] for line in _own_cgroups() if ":freezer:" in line), None)
        base = Path("/sys/fs/cgroup/freezer")
        if own is None or not (base / "tasks").exists():
            return None
        return base / own.lstrip("/") / self.name

    def _add_freezer(self) -> None:
        """A v1 freezer group beside v1 ones; a v2 group freezes every member through its own ``cgroup.freeze``."""
        if any(version == 2 for version, _ in self.dirs.values()):
            return
        path = self._freezer_v1()
        if path is not None and "freezer" not in self.dirs:
            with contextlib.suppress(OSError):
                path.mkdir(exist_ok=True)
                self.dirs["freezer"] = (1, path)

    def freeze(self, frozen: bool) -> None:
        """Stop (or resume) every member at once, so none can fork while the group is being killed."""
        for version, path in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                if version == 1 and (path / "freezer.state").exists():
                    (path / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
                elif version == 2:
                    (path / "cgroup.freeze").write_text("1" if frozen else "0")

    def remove(self, timeout: float = 1.0) -> None:
        """Remove the group's directories (after :func:`sweep` emptied it); a straggler leaves it behind."""
        with contextlib.suppress(OSError):
            super().remove(timeout)


def _own_cgroups() -> list[str]:
    try:
        return Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); False where unsupported.

    Only the dedicated supervisor process calls this: a subreaper must reap what it inherits.
    """
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        return False
    return True


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:300]


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def namespace_members(jail: int) -> set[int]:
    """Processes in the pid namespace of the jail whose outer process has host pid ``jail``, and in the
    namespaces nested in it (the student host's, :attr:`JailSpec.inner`)."""
    try:
        children = Path(f"/proc/{jail}/task/{jail}/children").read_text().split()
    except OSError:
        return set()
    ours = _pid_namespace(os.getpid())
    inner = {_pid_namespace(int(child)) for child in children} - {None, ours}
    if not inner:
        return set()
    processes = {int(e): (_parent(int(e)), _pid_namespace(int(e))) for e in os.listdir("/proc") if e.isdigit()}
    found: set[int] = set()
    grew = True
    while grew:  # a member's child in another namespace is the first of a nested one: its namespace joins
        grew = False
        for pid, (parent, namespace) in processes.items():
            if pid in found or namespace in (None, ours):
                continue
            if namespace in inner or parent in found:
                found.add(pid)
                inner.add(namespace)
                grew = True
    return found


def inner_pid(pid: int) -> int | None:
    """The pid of host process ``pid`` inside its own pid namespace (1 is a jail's init, 2 its command)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def sweep(cgroup: Cgroup | None, jails: Iterable[int] = (), *, exclude: Iterable[int] = ()) -> list[ProcessInfo]:
    """Kill every member of ``cgroup`` and of the pid namespaces of the jails ``jails`` (but ``exclude``).

    The cgroup is frozen first so that nothing forks meanwhile; a namespace ends with its first process.
    Returns what was alive at the first look.
    """
    skip = set(exclude) | {os.getpid()}

    def members() -> set[int]:
        found = set(cgroup.members()) if cgroup is not None else set()
        for jail in jails:
            found |= namespace_members(jail)
        return found - skip

    first = members()
    report = [ProcessInfo(pid, _command(pid)) for pid in sorted(first)]
    for _ in range(100):
        pids = members()
        if not pids:
            break
        if cgroup is not None:
            cgroup.freeze(True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.freeze(False)  # SIGKILL is delivered on thaw
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


def _main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -I -m vlab.grading.jail SPEC_JSON -- COMMAND...", file=sys.stderr)
        return 2
    raw: dict[str, Any] = json.loads(argv[0])  # JailSpec as JSON (our own argv): typed on the next lines
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    enter(JailSpec(**fields), argv[2:])
    return 0  # not reached: enter() execs


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
