"""Spawning QEMU so that it can never outlive the Python process that owns it.

Three layers, because each alone has a hole:

1. ``PR_SET_PDEATHSIG`` (set in the child between fork and exec): the kernel
   sends QEMU ``SIGKILL`` when its parent dies, including by ``kill -9`` of a
   Jupyter kernel. The fork happens in vlab's loop thread (see
   :mod:`vlab.qemu.loop`), which lives as long as the process, because the
   signal really follows the forking *thread*.
2. A workdir per VM under :func:`vlab.paths.runtime_dir` (verified private: ours,
   0700, not a symlink) holding ``owner.json`` (owner pid and start time, QEMU pid
   and start time, and this process's random *token*). :func:`sweep_orphans`, run
   before every launch, kills QEMUs whose owner is gone and removes their workdirs,
   but only a process that is provably such a QEMU: owned by this uid, running a
   ``qemu-system-*`` executable, with the recorded start time (pid reuse) and the
   token in its environment (``VLAB_OWNER_TOKEN``, which only vlab's launch puts
   there). Anything else named in an owner file is left alone.
3. An ``atexit`` hook in :mod:`vlab.qemu.vm` stops live VMs on a normal exit.

QEMU's stderr goes to a file in the workdir so that error messages can quote
its tail (:meth:`QemuProcess.stderr_tail`) without a reader thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.files import write_atomic
from vlab.host import procfs
from vlab.paths import check_private_dir, runtime_dir, short_runtime_dir, short_runtime_path
from vlab.qemu.loop import call_in_loop_thread

__all__ = ["QemuProcess", "make_workdir", "sweep_orphans", "is_our_qemu", "child_setup", "TOKEN_ENV"]

#: The environment variable carrying the owner's token into QEMU (proof that vlab started it).
TOKEN_ENV = "VLAB_OWNER_TOKEN"
_TOKEN = secrets.token_hex(16)  # per Python process: a QEMU of this owner carries it

_PR_SET_PDEATHSIG = 1
_OWNER_FILE = "owner.json"
_WORKDIR_PREFIX = "vm"
_counter = itertools.count(1)
#: longest workdir path that still leaves room for a socket name under the 108-byte sun_path limit
_MAX_WORKDIR_LEN = 90


def make_workdir() -> Path:
    """A fresh private directory for one VM's pidfile, stderr, sockets and overlays.

    Under :func:`vlab.paths.runtime_dir` if its path is short enough for UNIX sockets, else under
    :func:`vlab.paths.short_runtime_dir` (both verified private; ``mkdtemp`` makes it 0700 with a random name), where
    :func:`sweep_orphans` finds it too.

    :raises VlabError: if the directory cannot be made (full or read-only filesystem).
    """
    base = runtime_dir()
    name = f"{_WORKDIR_PREFIX}{os.getpid()}-{next(_counter)}-"
    if len(str(base)) + len(name) + 8 > _MAX_WORKDIR_LEN:
        base = short_runtime_dir()  # the user's runtime dir is too deep for socket paths
    try:
        return Path(tempfile.mkdtemp(prefix=name, dir=base))
    except OSError as exc:
        raise VlabError(f"cannot create the VM's work directory ({exc.strerror})", field="runtime_dir",
                        value=str(base), fix="free space there, or point VLAB_RUNTIME at a writable private "
                                             "directory") from None


def is_our_qemu(pid: int, start: int, token: str) -> bool:
    """True only for a QEMU that vlab started for this user: uid, executable, start time and token all match."""
    if procfs.owner_uid(pid) != os.geteuid() or procfs.start_time(pid) != start:
        return False
    exe = procfs.exe(pid) or ""
    if not os.path.basename(exe).startswith("qemu-system-"):
        return False
    env = procfs.environ(pid) or {}
    return bool(token) and secrets.compare_digest(env.get(TOKEN_ENV, ""), token)


def sweep_orphans() -> list[int]:
    """Kill QEMUs whose owning Python process died and remove their workdirs.

    :returns: the pids of the QEMU processes killed.
    """
    killed: list[int] = []
    for base in _workdir_bases():
        _remove_unowned_workdirs(base)
        killed += _sweep(base)
    return killed


def _workdir_bases() -> list[Path]:
    """Where VM work directories may be: the runtime directory, and the short one if it exists and is private
    (a planted one is never looked into: it is only refused when a VM needs it)."""
    bases = [runtime_dir()]
    short = short_runtime_path()
    if short != bases[0]:
        with contextlib.suppress(VlabError):
            check_private_dir(short)
            bases.append(short)
    return bases


def _sweep(base: Path) -> list[int]:
    killed: list[int] = []
    for owner_file in base.glob(f"{_WORKDIR_PREFIX}*/{_OWNER_FILE}"):
        info = _read_owner_file(owner_file)
        if info is None:
            continue  # being written right now by a live owner, or not ours
        owner, qemu, qemu_start, token = info["owner"], info["qemu"], info["qemu_start"], info["token"]
        if procfs.alive(owner) and procfs.start_time(owner) == info.get("owner_start"):
            continue
        if is_our_qemu(qemu, qemu_start, token):
            os.kill(qemu, signal.SIGKILL)
            killed.append(qemu)
        shutil.rmtree(owner_file.parent, ignore_errors=True)
    return killed


def _read_owner_file(path: Path) -> dict[str, Any] | None:
    try:
        if path.is_symlink() or path.parent.is_symlink() or path.lstat().st_uid != os.geteuid():
            return None
        info = json.loads(path.read_text())
        return {"owner": int(info["owner"]), "owner_start": info.get("owner_start"), "qemu": int(info["qemu"]),
                "qemu_start": int(info["qemu_start"]), "token": str(info["token"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_unowned_workdirs(base: Path) -> None:
    """Workdirs without an owner file whose creator (the pid in the name) is dead: a crash before launch."""
    for workdir in base.glob(f"{_WORKDIR_PREFIX}*-*"):
        pid_text = workdir.name[len(_WORKDIR_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not (workdir / _OWNER_FILE).exists() and not procfs.alive(int(pid_text)) \
                and not workdir.is_symlink():
            shutil.rmtree(workdir, ignore_errors=True)


def child_setup(parent_pid: int) -> None:  # pragma: no cover - runs in the forked child
    """Between fork and exec: die with the parent (``PR_SET_PDEATHSIG``), in a process group of our own."""
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
        env = {**os.environ, TOKEN_ENV: _TOKEN}
        try:
            stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed right after the fork
        except OSError as exc:
            raise VlabError(f"cannot create QEMU's log file ({exc.strerror})", field="runtime_dir",
                            value=str(workdir), fix="free space in the runtime directory (VLAB_RUNTIME)") from None
        with stderr:
            try:
                self._popen = call_in_loop_thread(lambda: subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=tuple(pass_fds),
                    preexec_fn=lambda: child_setup(parent), close_fds=True, env=env,
                ))
            except FileNotFoundError:
                raise VlabError("QEMU is not installed", field="qemu", value=self.argv[0],
                                fix="apt-get install qemu-system-x86 (or run: vlab doctor)") from None
        self.pid: int = self._popen.pid
        try:
            self._write_owner_file()
        except OSError as exc:
            # a QEMU without an owner file is one no sweep would ever find: it must not run on
            self.kill()
            raise VlabError(f"cannot record the VM's owner ({exc.strerror}); QEMU was stopped",
                            field="runtime_dir", value=str(workdir),
                            fix="free space in the runtime directory (VLAB_RUNTIME)") from None

    def _write_owner_file(self) -> None:
        info = {
            "owner": os.getpid(), "owner_start": procfs.start_time(os.getpid()),
            "qemu": self.pid, "qemu_start": procfs.start_time(self.pid), "token": _TOKEN,
        }
        write_atomic(self.workdir / _OWNER_FILE, json.dumps(info), mode=0o600)  # never half a file

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

