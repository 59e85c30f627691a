"""Lab 08 — containers from scratch, and a container next to a VM.

The student writes the container runtime, ``run_container(rootfs, cmd, limits)``, in the notebook
(``labs/source/08-containers.ipynb``) from the thin system-call wrappers of :mod:`vlab.host.syscalls`
and the cgroup handle :class:`vlab.host.Cgroup`. This module holds only what is *not* the runtime:

* **The root filesystem**: :func:`build_rootfs` lays out Debian's ``busybox-static`` (already on the
  host: nothing is downloaded) as a minimal root filesystem; :func:`tree_digest` proves it stays pristine.
* **Process plumbing**: :func:`spawn` forks the child a runtime sets up, captures its output, holds it at a
  gate until the parent has done its host-side steps (joining a cgroup), and kills what is left — the
  container's PID 1 takes its whole PID namespace with it — on exit, timeout or error. :func:`scratch`
  gives a runtime a private directory for its overlay's upper layer; :func:`leftovers` and :func:`sweep`
  find and remove what a failed or killed runtime left (mounts, cgroups, directories, processes).
* **The checks' eyes**: :class:`Observer` looks at the shell that runs a check's probe from the host, in
  ``/proc`` (its PID inside, its namespaces, its root): a runtime reports the container's output itself, and a
  runtime could make that up.
* **An escape**: :func:`leaky_container` is a container built with ``unshare(1)`` and ``chroot`` that skips
  one step — it keeps the host's ``/proc`` instead of mounting a fresh one. The student finds the escape.
* **OCI images** (from :mod:`vlab.labs.oci`): :func:`layer_tar`, :func:`rootfs_layer` and
  :func:`write_oci_layout` build an image layout (index, manifest, config, gzip'd layer tarballs) locally; the
  student unpacks it.
* **Measurements**: :func:`view` (what a system reports about its kernel), :func:`start_seconds`,
  :func:`idle_footprint_kib` (proportional set size of an idle container's processes) and :func:`boot_vm`.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlab.errors import VlabError
from vlab.grading.mounts import shared_dir
from vlab.host import Cgroup, detect_cgroups, procfs
from vlab.host.syscalls import die_with_parent
from vlab.labs.oci import layer_tar, rootfs_layer, tree_digest, write_oci_layout
from vlab.paths import runtime_dir

if TYPE_CHECKING:
    from vlab.qemu import VM

__all__ = [
    "BUSYBOX",
    "Bridge",
    "PREFIX",
    "SCRIBBLE_DIR",
    "VIEW_COMMAND",
    "Completed",
    "Observer",
    "Support",
    "VMRun",
    "boot_vm",
    "build_rootfs",
    "idle_footprint_kib",
    "kill_tree",
    "layer_tar",
    "leaky_container",
    "leftovers",
    "namespace_ids",
    "params_for",
    "parse_view",
    "rootfs_layer",
    "scratch",
    "spawn",
    "start_seconds",
    "support",
    "sweep",
    "tree_digest",
    "unique_name",
    "view",
    "workspace",
    "write_oci_layout",
]

#: Debian's statically linked busybox (package ``busybox-static``): the whole userland of the container.
BUSYBOX = Path("/bin/busybox")
#: A directory only the image has (never a host): probes write into it, so that a runtime that fails to put the
#: container in its own root makes the write fail instead of changing the host's file (as root, /etc/passwd once).
SCRIBBLE_DIR = "/etc/vlab-image"
#: Prefix of everything this lab creates on the host (scratch directories, cgroups), followed by the pid.
PREFIX = "vlab-l8"
_MIB = 1 << 20
_names = itertools.count()


def params_for(seed: int) -> dict[str, Any]:
    """The parameters of one instance of lab 08 (plain JSON values)."""
    rng = random.Random(seed)
    return {
        "hostname": f"box-{rng.randrange(100, 1000)}",
        "memory_mib": rng.choice([24, 32, 40, 48]),
        "pids_max": rng.randrange(8, 20),
        "cpu_quota": rng.choice([0.2, 0.25, 0.3, 0.4, 0.5]),
        "busy_processes": rng.choice([1, 2, 3]),
        "busy_seconds": 1.0,
        "budget_mib": rng.choice([1024, 2048, 3072, 4096, 8192]),
        "motd": f"welcome to image {rng.getrandbits(32):08x}",
        "removed_applet": rng.choice(["vi", "wget", "telnet", "ftpget", "nc"]),
    }


# ---------------------------------------------------------------------------------------------- support


@dataclass(frozen=True)
class Support:
    """What this host lets this user do for the lab, and why the rest is skipped."""

    namespaces: bool
    rootless: bool
    cgroups: tuple[str, ...]
    why: str


def support() -> Support:
    """Probe once: can we create the container's namespaces (as root, or inside a user namespace), which
    cgroup controllers are writable, and say so in a sentence for the notebook."""
    root = os.geteuid() == 0
    flags = ["--mount", "--uts", "--ipc", "--net", "--pid", "--fork"]
    argv = ["unshare", *flags, "true"] if root else ["unshare", "--user", "--map-root-user", *flags, "true"]
    try:
        ok = subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    groups = detect_cgroups()
    usable = tuple(c for c in ("memory", "pids", "cpu") if groups.where(c))
    if not ok:
        why = ("this host does not let this user create namespaces (as on Binder, whose notebooks run in a "
               "locked-down container): the parts that run containers are skipped; the questions can still "
               "be answered")
    elif root:
        why = "root: the runtime creates PID, mount, UTS, IPC and network namespaces directly"
    else:
        why = "not root: a rootless container (CLONE_NEWUSER maps you to root inside it)"
    why += f"; {groups.describe()}"
    if ok and len(usable) < 3:
        why += ": limits without a writable controller are skipped"
    return Support(ok, not root, usable, why)


# ---------------------------------------------------------------------------------------------- rootfs


def build_rootfs(dest: Path | str) -> Path:
    """Lay out a minimal root filesystem at ``dest`` (a new or empty directory) from :data:`BUSYBOX`:
    ``/bin/busybox`` and one relative symlink per applet, the usual top-level directories, ``/etc/passwd``,
    ``/etc/group``, ``/etc/hostname``, and :data:`SCRIBBLE_DIR`. Takes a few milliseconds; nothing is
    downloaded."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise VlabError("the root filesystem's directory must be new or empty (and not a symlink)",
                        field="dest", value=str(dest), fix="pass a fresh directory, e.g. box / 'rootfs'")
    if not BUSYBOX.is_file():
        raise VlabError("busybox is not installed", field="busybox", value=str(BUSYBOX),
                        fix="apt-get install busybox-static")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True,
                             timeout=10).stdout.split()
    for sub in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home", "var", "usr/bin"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in applets:
        if re.fullmatch(r"[a-z0-9_.\[-]+", applet) and applet != "busybox":
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (dest / "etc" / "hostname").write_text("busybox\n")
    (dest / SCRIBBLE_DIR.lstrip("/")).mkdir()
    for name in ("null", "zero", "urandom"):  # bind-mount targets for the host's device nodes
        (dest / "dev" / name).touch()
    return dest


# ---------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Completed:
    """A finished container: its exit status (negative: killed by that signal), its output (stdout and
    stderr), the seconds from fork to exit, and whether :func:`spawn` killed it at the timeout."""

    status: int
    output: str
    seconds: float
    timed_out: bool = False


def unique_name(kind: str = "ct") -> str:
    """A name no other container of this or any other process uses (for cgroups and scratch directories);
    it carries this process's pid so that :func:`sweep` can tell when its owner is gone."""
    if not re.fullmatch(r"[a-z]{1,8}", kind):
        raise VlabError("kind must be 1-8 lower-case letters", field="kind", value=kind, fix='e.g. "ct"')
    return f"{PREFIX}-{os.getpid()}-{kind}{next(_names)}"


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A private directory for one container's writable layer (overlay ``upperdir`` and ``workdir``),
    removed afterwards with everything in it."""
    path = runtime_dir() / unique_name("scratch")
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        _remove_tree(path)


def workspace(shared: bool = False) -> Path:
    """A directory for the lab's files (root filesystems, images), removed when Python exits or by
    :func:`sweep`. ``shared``: readable by other users (mode 0755, in the grader's shared directory while it
    grades, :func:`vlab.grading.mounts.shared_dir`) — for a check that builds a root filesystem for the
    student's unprivileged, jailed process to use."""
    if shared:
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{os.getpid()}-shared", dir=shared_dir()))
        path.chmod(0o755)
    else:
        path = runtime_dir() / unique_name("box")
        path.mkdir(mode=0o700)
    atexit.register(_remove_tree, path)
    return path


def _remove_tree(path: Path) -> None:
    # overlay leaves work/work at mode 000; open it up first (never through a symlink the container made)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(full).st_mode):
                    os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def spawn(child: Callable[[], None], *, before: Callable[[int], None] | None = None, timeout: float = 10.0,
          max_output: int = 1 << 20) -> Completed:
    """Fork a process that runs ``child()`` (which should end by exec'ing the container's command), and wait.

    The child gets its own session (so it has no terminal), dies if this process dies, inherits no other
    descriptor of this process, has stdout and stderr captured (at most ``max_output`` bytes are kept), and
    waits at a gate until ``before(pid)`` has run here — put the host-side steps there, e.g.
    ``cgroup.add(pid)``, so that the container is limited from its first instruction. An exception in
    ``child()`` is printed into the output (status 125).

    Whatever happens (exit, timeout, an exception in ``before``), every process the child left is killed.

    :raises VlabError: for a bad ``timeout``.
    """
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise VlabError("timeout must be a number of seconds in (0, 3600]", field="timeout", value=timeout,
                        fix="e.g. timeout=10")
    out_r, out_w = os.pipe()
    gate_r, gate_w = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: from here on only os-level calls, never back into the caller's stack
        status = 125
        try:
            os.close(out_r)
            os.close(gate_w)
            os.setsid()
            die_with_parent()
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            # a pipe another thread had open at the fork (its subprocess's stdout) would stay open for the
            # container's whole life, and that thread's read would hang: keep only the gate
            os.closerange(3, gate_r)
            os.closerange(gate_r + 1, os.sysconf("SC_OPEN_MAX"))
            # a Jupyter kernel's sys.stdout talks to a thread that does not exist in this copy of it
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            if os.read(gate_r, 1) != b"g":
                os._exit(124)  # the parent gave up before opening the gate
            os.close(gate_r)
            child()
            status = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                os.write(2, traceback.format_exc().encode(errors="replace"))
        finally:
            os._exit(status)
    os.close(out_w)
    os.close(gate_r)
    chunks: list[bytes] = []
    timed_out = False
    try:
        if before is not None:
            before(pid)
        os.write(gate_w, b"g")
        timed_out = _collect(out_r, started + timeout, chunks, max_output)
    finally:
        os.close(gate_w)
        os.close(out_r)
        kill_tree(pid)
        _, wait_status = os.waitpid(pid, 0)
    status = -signal.SIGKILL if timed_out else os.waitstatus_to_exitcode(wait_status)
    return Completed(status, b"".join(chunks).decode(errors="replace"), time.perf_counter() - started, timed_out)


def _collect(fd: int, deadline: float, chunks: list[bytes], limit: int) -> bool:
    """Read ``fd`` until EOF (True if the deadline came first); keep at most ``limit`` bytes."""
    import select

    kept = 0
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return True
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            return False
        if kept < limit:
            chunks.append(data[: limit - kept])
            kept += len(chunks[-1])


def kill_tree(pid: int, rounds: int = 50) -> None:
    """SIGKILL ``pid``'s descendants, then ``pid`` (not reaped: that is its parent's job). Killing a PID
    namespace's init kills the whole namespace, so a fork bomb inside cannot outrun this."""
    for _ in range(rounds):
        victims = procfs.descendants(pid)
        if not victims:
            break
        for victim in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- leftovers


def _places() -> list[Path]:
    """Where :func:`scratch` and :func:`workspace` make directories."""
    return [runtime_dir(), Path(tempfile.gettempdir())]


def namespace_ids(pid: int | None = None) -> dict[str, str]:
    """This process's (or ``pid``'s) namespaces as the kernel names them (``"net:[4026531840]"``), by kind: a
    container's differ from its creator's exactly where it has a namespace of its own."""
    where = "self" if pid is None else pid
    return {kind: os.readlink(f"/proc/{where}/ns/{kind}") for kind in ("ipc", "mnt", "net", "pid", "uts")}


_SHELLS = ("sh", "ash", "busybox")


class Observer:
    """Watches, from the host, for the shell that runs :attr:`command` (``sh -c`` with it), and records what the
    kernel shows of it while it runs: its PID in its own PID namespace, its namespaces, what its ``/`` holds and
    which of ``watch`` (host paths) it can reach. A runtime reports the container's output itself, which a
    runtime's code could make up; what ``/proc`` shows of a live process it cannot.

    Use as a context manager around the run of ``["sh", "-c", observer.command]``: :attr:`command` is ``command``
    with a random token in front (a no-op word), so no other process matches. The command must keep its shell a
    moment (``...; sleep 1; :`` -- with a command last, the shell would exec it in its own place, and the shell's
    command line would be gone) so that a look finds it.
    """

    _PERIOD = 0.002  # s between two looks through /proc

    def __init__(self, command: str, watch: tuple[str, ...] = ()) -> None:
        #: what the runtime must run with ``sh -c``
        self.command = f": vlab-observed-{os.urandom(8).hex()}; {command}"
        self._watch = tuple(watch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._look, name="vlab-observer", daemon=True)
        #: what was seen (None until the process was found), as plain data
        self.seen: dict[str, Any] | None = None

    def __enter__(self) -> Observer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _look(self) -> None:
        me = os.geteuid()
        while not self._stop.is_set() and self.seen is None:
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or procfs.owner_uid(pid := int(entry)) != me:
                    continue
                argv = procfs.cmdline(pid) or []
                # the shell running the command, not a tool that starts it (unshare ... sh -c COMMAND)
                if argv[-2:] != ["-c", self.command] or os.path.basename(argv[0]) not in _SHELLS:
                    continue
                with contextlib.suppress(OSError):  # it ended meanwhile: then it was not seen
                    self.seen = self._facts(pid)
                    break
            self._stop.wait(self._PERIOD)

    def _facts(self, pid: int) -> dict[str, Any]:
        """What the kernel shows of ``pid`` (OSError if it ended meanwhile)."""
        status = Path(f"/proc/{pid}/status").read_text()
        nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
        root = f"/proc/{pid}/root"
        reached = [path for path in self._watch
                   if os.path.lexists(root + path) or glob.glob(f"{root}/*{path}") or glob.glob(f"{root}/.*{path}")
                   or glob.glob(f"{root}/proc/[0-9]*/root{path}")]
        return {
            "pid_inside": int(nspid[-1]),
            "namespaces": namespace_ids(pid),
            "root_entries": len(os.listdir(root)),
            "processes": len(glob.glob(f"{root}/proc/[0-9]*")),
            "reached": reached,
        }


def leftovers() -> dict[str, list[str]]:
    """What this process's containers left on the host: mounts under a scratch directory in *this* mount
    namespace (a runtime without ``CLONE_NEWNS`` leaks them), scratch directories, cgroups named by
    :func:`unique_name`, and descendant processes in another PID namespace. Empty lists: nothing left."""
    mine = f"{PREFIX}-{os.getpid()}-"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if mine in point:
                mounts.append(point)
    dirs = [str(p) for place in _places() for p in place.glob(mine + "scratch*")]
    groups = detect_cgroups()
    cgroups = [str(p) for c in ("memory", "pids", "cpu") if (place := groups.where(c))
               for p in place[1].glob(mine + "*")]
    ns = namespace_ids()["pid"]
    processes = []
    for pid in sorted(procfs.descendants(os.getpid())):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                processes.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
    return {"mounts": mounts, "scratch": dirs, "cgroups": cgroups, "processes": processes}


def sweep(workspaces: bool = False) -> dict[str, list[str]]:
    """Remove what containers of this process, or of a process that is gone, left behind; returns what
    was removed (same keys as :func:`leftovers`). Safe to call at any time between container runs.

    :param workspaces: also remove this process's :func:`workspace` directories (at the end of the notebook:
        a kernel that is killed never runs its exit handlers).
    """
    removed: dict[str, list[str]] = {"mounts": [], "scratch": [], "cgroups": [], "processes": []}
    for victim in leftovers()["processes"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(victim.split()[0]), signal.SIGKILL)
            removed["processes"].append(victim)
    mine = f"{PREFIX}-{os.getpid()}-"
    for point in reversed(leftovers()["mounts"]):
        with contextlib.suppress(VlabError):
            from vlab.host.syscalls import MNT_DETACH, umount

            umount(point, MNT_DETACH)
            removed["mounts"].append(point)

    def stale(name: str) -> bool:
        match = re.match(rf"{PREFIX}-(\d+)-", name)
        if match is None:
            return False
        if name.startswith(mine):  # ours: only what a container run made; the workspaces stay until exit
            return workspaces or not re.match(rf"{mine}(box|shared)", name)
        return not Path(f"/proc/{match.group(1)}").exists()

    for path in (p for place in _places() for p in place.glob(f"{PREFIX}-*")):
        if stale(path.name):
            _remove_tree(path)
            removed["scratch"].append(str(path))
    groups = detect_cgroups()
    names = {p.name for c in ("memory", "pids", "cpu") if (place := groups.where(c))
             for p in place[1].glob(f"{PREFIX}-*") if stale(p.name)}
    for name in sorted(names):
        group = Cgroup.existing(name, ("memory", "pids", "cpu"))
        if group is not None:
            for pid in group.members():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                group.remove()
                removed["cgroups"].append(name)
    return removed


# ---------------------------------------------------------------------------------------------- network


class Bridge:
    """A private network for containers: a bridge ``br0`` inside a network namespace of its own, held open by a
    sleeping process, so that the host's own network is never touched. A runtime connects a container by
    creating a veth pair whose one end it moves into this namespace (``ip link add eth0 type veth peer name X
    netns PID``) and attaches to ``br0``. Root only. :meth:`remove` (or ``with``) kills the holder: the
    namespace, the bridge and every veth end in it disappear with it.
    """

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise VlabError("a container network needs root (CAP_NET_ADMIN in the host's namespaces)",
                            field="Bridge", value=f"uid {os.geteuid()}", fix="skip the network part when not root")
        self._holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"], start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        #: the holder's pid: ``netns PID`` for ip(8), ``/proc/PID/ns/net`` for setns
        self.pid = self._holder.pid
        try:
            deadline = time.monotonic() + 5
            while os.readlink(f"/proc/{self.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                if time.monotonic() > deadline or self._holder.poll() is not None:
                    raise VlabError("the network namespace's holder did not start", field="Bridge",
                                    fix="is unshare(1) from util-linux installed?")
                time.sleep(0.01)
            for command in ("ip link add br0 type bridge", "ip link set br0 up", "ip link set lo up"):
                subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", *command.split()], check=True,
                               capture_output=True, timeout=10)
        except BaseException:
            self.remove()
            raise

    def links(self) -> list[str]:
        """The interfaces in the bridge's namespace (``br0``, ``lo`` and one veth end per connected container)."""
        done = subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", "ip", "-o", "link"],
                              capture_output=True, text=True, timeout=10, check=False)
        return [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()]

    def remove(self) -> None:
        if self._holder.poll() is None:
            self._holder.kill()
        self._holder.wait()

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# ---------------------------------------------------------------------------------------------- the leak


def leaky_container(rootfs: Path | str, command: str, timeout: float = 10.0) -> Completed:
    """Run the shell ``command`` in a container that skips one step: built with ``unshare(1)`` (new mount,
    UTS, IPC, network and PID namespaces, rootless when not root), an overlay over ``rootfs`` and
    ``chroot`` — but it bind-mounts the host's ``/proc`` instead of mounting a fresh one."""
    rootfs = Path(rootfs)
    if not isinstance(command, str) or "\0" in command:
        raise VlabError("command must be one shell command line (a str without NUL bytes)", field="command",
                        value=command, fix='e.g. "ls /proc"')
    if not (rootfs / "bin" / "busybox").is_file():
        raise VlabError("not a root filesystem made by build_rootfs", field="rootfs", value=str(rootfs),
                        fix="lab.build_rootfs(box / 'rootfs')")
    flags = ["--mount", "--uts", "--ipc", "--net", "--pid", "--fork"]
    if os.geteuid() != 0:
        flags = ["--user", "--map-root-user", *flags]
    script = ('mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/up,workdir=$2/work" "$2/root" && '
              'for d in null zero urandom; do mount --bind "/dev/$d" "$2/root/dev/$d" || exit; done && '
              'mount --rbind /proc "$2/root/proc" && exec chroot "$2/root" /bin/sh -c "$3"')
    with scratch() as box:
        for sub in ("up", "work", "root"):
            (box / sub).mkdir()

        def child() -> None:
            os.execvp("unshare", ["unshare", *flags, "sh", "-c", script, "leaky", str(rootfs.resolve()),
                                  str(box), command])

        return spawn(child, timeout=timeout)


# ---------------------------------------------------------------------------------------------- measurements

#: What a system says about the kernel it runs on, one answer per line (busybox and Debian both run it).
VIEW_COMMAND = ("uname -r; cat /proc/sys/kernel/random/boot_id; hostname; cut -d' ' -f1 /proc/uptime; "
                "cat /proc/modules 2>/dev/null | wc -l; ls -d /proc/[0-9]* | wc -l")
_VIEW_KEYS = ("kernel", "boot_id", "hostname", "uptime_s", "modules", "processes")


def parse_view(text: str) -> dict[str, Any]:
    """The answers to :data:`VIEW_COMMAND` as a dict (``uptime_s`` a float, counts as ints)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < len(_VIEW_KEYS):
        raise VlabError("unexpected answer to the view command", field="output", value=text[-300:],
                        fix="run lab.VIEW_COMMAND unchanged in a shell")
    found: dict[str, Any] = dict(zip(_VIEW_KEYS, lines[-len(_VIEW_KEYS):], strict=True))
    found["uptime_s"] = float(found["uptime_s"])
    found["modules"], found["processes"] = int(found["modules"]), int(found["processes"])
    return found


def view() -> dict[str, Any]:
    """The host's own answers to :data:`VIEW_COMMAND`."""
    done = subprocess.run(["sh", "-c", VIEW_COMMAND], capture_output=True, text=True, timeout=30, check=False)
    return parse_view(done.stdout)


Runtime = Callable[[Any, list[str], dict[str, Any]], Any]


def start_seconds(run: Runtime, rootfs: Any, repeats: int = 5) -> list[float]:
    """Wall-clock seconds of ``run(rootfs, ["true"], {})`` — a container's whole start and exit — ``repeats``
    times after one discarded warm-up run."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        run(rootfs, ["true"], {})
        times.append(time.perf_counter() - started)
    return times[1:]


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def idle_footprint_kib(run: Runtime, rootfs: Any, timeout: float = 10.0) -> list[int]:
    """Proportional set size (KiB) of each process of an idle container — a shell waiting in ``sleep``, as
    seen from the host: the processes that are this process's descendants in another PID namespace. The
    runtime's own helper processes outside the container's PID namespace are not counted (a real engine's
    runtime exits once the container runs)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["done"] = run(rootfs, ["sh", "-c", "sleep 30 & wait"], {})
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ns, deadline = namespace_ids()["pid"], time.monotonic() + timeout
    sizes: list[int] = []
    try:
        while time.monotonic() < deadline and thread.is_alive() and not sizes:
            inside = []
            for pid in procfs.descendants(os.getpid()):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                        inside.append(pid)
            comms = [Path(f"/proc/{p}/comm").read_text().strip() for p in inside if Path(f"/proc/{p}").exists()]
            if "sleep" in comms:
                time.sleep(0.1)  # let the shell settle into wait
                sizes = [_pss_kib(p) for p in inside]
                for pid in inside:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
    finally:
        thread.join(timeout)
    if "error" in result:
        raise result["error"]
    if not sizes:
        raise VlabError("no container process showed up", field="run", value=getattr(run, "__name__", run),
                        fix="does your runtime create a PID namespace and run the command?")
    return sizes


@dataclass
class VMRun:
    """One booted VM's figures: boot seconds, its QEMU process's proportional set size, its view."""

    boot_seconds: float
    pss_kib: int
    view: dict[str, Any] = field(default_factory=dict)


def boot_vm(name: str = "l8vm", mem: int = 96, timeout: float = 90.0) -> VMRun:
    """Boot vlab's smallest guest (no disk, no NIC, no balloon: the fastest start vlab has), ask it
    :data:`VIEW_COMMAND`, measure QEMU's memory, and stop it — whatever happens."""
    from vlab.qemu import VM, VMConfig

    vm: VM = VM(VMConfig(name=name, mem=mem, balloon=False))
    try:
        vm.start(timeout=timeout)
        answer = parse_view(vm.console.run(VIEW_COMMAND).output)
        assert vm.pid is not None
        return VMRun(float(vm.boot_seconds or 0.0), _pss_kib(vm.pid), answer)
    finally:
        try:
            vm.stop()
        except Exception:
            with contextlib.suppress(Exception):
                vm.kill()
