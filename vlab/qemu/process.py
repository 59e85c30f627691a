"""Spawning QEMU so that it can never outlive the Python process that owns it.

Three layers, because each alone has a hole:

1. ``PR_SET_PDEATHSIG`` (set in the child between fork and exec): the kernel
   sends QEMU ``SIGKILL`` when its parent dies, including by ``kill -9`` of a
   Jupyter kernel. The fork happens in vlab's loop thread (see
   :mod:`vlab.qemu.loop`), which lives as long as the process, because the
   signal really follows the forking *thread*.
2. A workdir per VM under :func:`vlab.paths.runtime_dir` holding ``owner.json``
   (owner pid, QEMU pid and QEMU's start time). :func:`sweep_orphans`, run before
   every launch, kills QEMUs whose owner is gone and removes their workdirs; the
   start time guards against killing an unrelated process that reused the pid.
3. An ``atexit`` hook in :mod:`vlab.qemu.vm` stops live VMs on a normal exit.

QEMU's stderr goes to a file in the workdir so that error messages can quote
its tail (:meth:`QemuProcess.stderr_tail`) without a reader thread.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vlab.errors import VlabError
from vlab.paths import runtime_dir
from vlab.qemu.loop import call_in_loop_thread

__all__ = ["QemuProcess", "make_workdir", "sweep_orphans", "process_start_time"]

_PR_SET_PDEATHSIG = 1
_OWNER_FILE = "owner.json"
_WORKDIR_PREFIX = "vm"
_counter = itertools.count(1)
#: longest workdir path that still leaves room for a socket name under the 108-byte sun_path limit
_MAX_WORKDIR_LEN = 90


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_workdir() -> Path:
    """A fresh private directory for one VM's pidfile, stderr, sockets and overlays.

    Under :func:`vlab.paths.runtime_dir` if its path is short enough for UNIX sockets, else under /tmp.
    """
    base = runtime_dir()
    name = f"{_WORKDIR_PREFIX}{os.getpid()}-{next(_counter)}-"
    if len(str(base)) + len(name) + 8 > _MAX_WORKDIR_LEN:
        base = Path(tempfile.gettempdir())  # the user's runtime dir is too deep for socket paths
    return Path(tempfile.mkdtemp(prefix=name, dir=base))


def sweep_orphans() -> list[int]:
    """Kill QEMUs whose owning Python process died and remove their workdirs.

    :returns: the pids of the QEMU processes killed.
    """
    killed: list[int] = []
    _remove_unowned_workdirs()
    for owner_file in runtime_dir().glob(f"{_WORKDIR_PREFIX}*/{_OWNER_FILE}"):
        try:
            info = json.loads(owner_file.read_text())
            owner, qemu, qemu_start = int(info["owner"]), int(info["qemu"]), int(info["qemu_start"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written right now by a live owner, or not ours
        if _alive(owner) and process_start_time(owner) == info.get("owner_start"):
            continue
        if process_start_time(qemu) == qemu_start:
            os.kill(qemu, signal.SIGKILL)
            killed.append(qemu)
        shutil.rmtree(owner_file.parent, ignore_errors=True)
    return killed


def _remove_unowned_workdirs() -> None:
    """Workdirs without an owner file whose creator (the pid in the name) is dead: a crash before launch."""
    for workdir in runtime_dir().glob(f"{_WORKDIR_PREFIX}*-*"):
        pid_text = workdir.name[len(_WORKDIR_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not (workdir / _OWNER_FILE).exists() and not _alive(int(pid_text)):
            shutil.rmtree(workdir, ignore_errors=True)


def _child_setup(parent_pid: int) -> None:  # pragma: no cover - runs in the forked child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died between fork and prctl: nobody would kill us
        os._exit(1)
    os.setpgid(0, 0)  # a terminal's Ctrl-C goes to Python, which then stops QEMU in order


class QemuProcess:
    """A running QEMU child process and its workdir.

    :param argv: the full command line.
    :param workdir: the VM's private directory (pidfile and stderr go there).
    :param pass_fds: fds QEMU inherits (QMP and console sockets, taps).
    """

    def __init__(self, argv: Sequence[str], workdir: Path, pass_fds: Sequence[int]) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.stderr_path = workdir / "qemu.stderr"
        parent = os.getpid()
        with open(self.stderr_path, "wb") as stderr:
            try:
                self._popen = call_in_loop_thread(lambda: subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=tuple(pass_fds),
                    preexec_fn=lambda: _child_setup(parent), close_fds=True,
                ))
            except FileNotFoundError:
                raise VlabError("QEMU is not installed", field="qemu", value=self.argv[0],
                                fix="apt-get install qemu-system-x86 (or run: vlab doctor)") from None
        self.pid: int = self._popen.pid
        self._write_owner_file()

    def _write_owner_file(self) -> None:
        info = {
            "owner": os.getpid(), "owner_start": process_start_time(os.getpid()),
            "qemu": self.pid, "qemu_start": process_start_time(self.pid),
        }
        tmp = self.workdir / (_OWNER_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(self.workdir / _OWNER_FILE)  # the sweeper never sees half a file

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, or None while it runs (negative: killed by that signal)."""
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for QEMU to exit; True if it did."""
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def signal(self, signum: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        self._popen.wait()

    def stderr_tail(self, lines: int = 15) -> str:
        """The last lines QEMU wrote to stderr ("" if none)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def describe_exit(self) -> str:
        """``QEMU exited with status N`` / ``killed by SIGKILL``, plus the stderr tail."""
        code = self.returncode
        if code is None:
            head = f"QEMU (pid {self.pid}) is still running"
        elif code < 0:
            head = f"QEMU (pid {self.pid}) was killed by {signal.Signals(-code).name}"
        else:
            head = f"QEMU (pid {self.pid}) exited with status {code}"
        tail = self.stderr_tail()
        return head + (f"; its stderr ends with:\n{tail}" if tail else "; it wrote nothing on stderr")

    def remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

