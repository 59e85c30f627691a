"""Thin wrappers over the Linux system calls a container runtime is made of.

``unshare``, ``setns``, ``mount``, ``umount2`` and ``pivot_root`` have no wrapper in Python 3.11's
:mod:`os`; these call them through :mod:`ctypes`, one call each and nothing more, so that the *steps*
of a container runtime stay in the caller's code (lab 08 has the student write them). A refused call
raises :class:`~vlab.errors.VlabError` naming the call, its arguments, the kernel's reason and the
usual fix (``EPERM`` without root or a user namespace, ``EINVAL`` from ``pivot_root`` on a shared or
non-mount-point root, …).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import socket
from pathlib import Path

from vlab.errors import VlabError

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "die_with_parent",
    "mount",
    "pivot_root",
    "sethostname",
    "setns",
    "umount",
    "unshare",
    "write_id_maps",
]

# <linux/sched.h>: namespace kinds for unshare(2) / setns(2)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# <linux/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2

_PR_SET_PDEATHSIG = 1
# glibc has no pivot_root(): the raw system call number per architecture
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_HINTS = {
    errno.EPERM: "this needs root, or CAP_SYS_ADMIN inside a user namespace: add CLONE_NEWUSER to the same "
                 "unshare() (and map your uid with write_id_maps) first",
    errno.EACCES: "permission denied on a path: is it readable by the container's user?",
    errno.ENOENT: "the path does not exist: create the directory first",
    errno.EBUSY: "already mounted, or still in use",
}
_libc = ctypes.CDLL(None, use_errno=True)


def _path(value: str | os.PathLike[str] | None, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise VlabError(f"expected a path string, got {type(value).__name__}", field=name, value=value,
                        fix="pass a str or pathlib.Path")
    text = os.fspath(value)
    if "\0" in text:
        raise VlabError("a path cannot contain a NUL byte", field=name, value=text, fix="remove the NUL byte")
    return text.encode()


def _check(result: int, call: str, hint: str | None = None) -> None:
    if result == 0:
        return
    code = ctypes.get_errno()
    raise VlabError(f"the kernel refused it: {os.strerror(code)} ({errno.errorcode.get(code, code)})",
                    field=call, fix=hint or _HINTS.get(code))


def _flags(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise VlabError("flags must be an int made of the CLONE_*/MS_* constants", field=name, value=value,
                        fix="combine constants with |, e.g. CLONE_NEWNS | CLONE_NEWUTS")
    return value


def unshare(flags: int) -> None:
    """``unshare(2)``: move this process into new namespaces (``CLONE_NEWPID`` applies to its next child)."""
    _check(_libc.unshare(ctypes.c_int(_flags(flags, "unshare"))), f"unshare({flags:#x})")


def setns(path: str | os.PathLike[str], nstype: int = 0) -> None:
    """``setns(2)``: join the namespace ``path`` names (e.g. ``/proc/PID/ns/net``)."""
    fd = os.open(_path(path, "setns") or b"", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, ctypes.c_int(_flags(nstype, "setns"))), f"setns({os.fspath(path)!r})")
    finally:
        os.close(fd)


def mount(source: str | os.PathLike[str] | None, target: str | os.PathLike[str], fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    """``mount(2)``, e.g. ``mount("overlay", merged, "overlay", 0, "lowerdir=…,upperdir=…,workdir=…")``,
    ``mount("proc", root / "proc", "proc")`` or ``mount(None, "/", None, MS_REC | MS_PRIVATE)``."""
    call = f"mount({source!s}, {target!s}, {fstype}, {flags:#x}, {data})"
    result = _libc.mount(_path(source, "source"), _path(target, "target"), _path(fstype, "fstype"),
                         ctypes.c_ulong(_flags(flags, "mount")), _path(data, "data"))
    _check(result, call)


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    """``umount2(2)``; ``MNT_DETACH`` detaches now and frees the mount when no longer busy."""
    _check(_libc.umount2(_path(target, "target"), ctypes.c_int(_flags(flags, "umount"))),
           f"umount({os.fspath(target)!r})")


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    """``pivot_root(2)``: make ``new_root`` this mount namespace's ``/`` and move the old root to ``put_old``.

    ``new_root`` must be a mount point, not on the same mount as the current root, and the current root's
    mounts must not be shared (make them private first); ``put_old`` must be a directory under ``new_root``.
    """
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise VlabError("no pivot_root system call number known for this CPU", field="machine",
                        value=platform.machine(), fix="add it to vlab.host.syscalls._SYS_PIVOT_ROOT")
    result = _libc.syscall(ctypes.c_long(number), _path(new_root, "new_root"), _path(put_old, "put_old"))
    _check(result, f"pivot_root({os.fspath(new_root)!r}, {os.fspath(put_old)!r})",
           "new_root must be a mount point (bind-mount or overlay-mount it), put_old a directory inside it, "
           "and '/' must not be shared: mount(None, '/', None, MS_REC | MS_PRIVATE) in the new mount namespace"
           if ctypes.get_errno() == errno.EINVAL else None)


def sethostname(name: str) -> None:
    """Set the hostname of this process's UTS namespace."""
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise VlabError("a hostname is 1 to 64 characters", field="hostname", value=name, fix='e.g. "box-1"')
    try:
        socket.sethostname(name)
    except OSError as exc:
        raise VlabError(f"the kernel refused it: {exc.strerror}", field="sethostname", value=name,
                        fix="unshare(CLONE_NEWUTS) first (and be root in it)") from None


def write_id_maps(uid: int, gid: int) -> None:
    """Map ``uid``/``gid`` (this process's ids *before* ``unshare(CLONE_NEWUSER)``) to root inside the new
    user namespace: ``/proc/self/{setgroups,uid_map,gid_map}``. One line each, as rootless runtimes do."""
    proc = Path("/proc/self")
    try:
        (proc / "setgroups").write_text("deny")  # required before an unprivileged gid_map
        (proc / "uid_map").write_text(f"0 {int(uid)} 1")
        (proc / "gid_map").write_text(f"0 {int(gid)} 1")
    except OSError as exc:
        raise VlabError(f"cannot write the id maps: {exc.strerror}", field="write_id_maps", value=(uid, gid),
                        fix="call it once, right after unshare(CLONE_NEWUSER), with os.getuid()/os.getgid() "
                        "read before the unshare") from None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``; cleared by fork)."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
