"""The sandbox's file system: a fresh root built from an allow-list of bind mounts.

:func:`build_root` runs in the jail's new mount namespace (as its pid 1, before the privilege drop):
it mounts a tmpfs on ``stage``, binds into it only what a student process needs and pivots into
it. Nothing else of the host exists inside -- no source notebooks, bundles, gradebooks, other
submissions or home directories -- whatever the host's directory modes are:

* read-only: the system (``/usr``, ``/etc`` and the ``/bin``, ``/lib`` links), the Python
  environment, the vlab package, the guest images and their sources, the grader's snapshot templates
  (:func:`student_readonly`: a VM the notebook starts restores from them, and cannot change them);
* read-write: the submission's working directory (and the kernel's connection directory);
* the submission's shared directory (:func:`shared_dir`): the grader's files for the student's code
  (lab 08's root filesystems), owned by the grader, so writable only where a check made a directory so;
* fresh and private: ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run`` (tmpfs, gone with the
  namespace), a ``/proc`` of the new pid namespace, a minimal ``/dev``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "SYSTEM_READONLY",
    "build_root",
    "libc_call",
    "remount_proc",
    "share_with_students",
    "shared_dir",
    "student_readonly",
]

#: Host system directories every student process may read.
SYSTEM_READONLY = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/sys")
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "kvm")
_PRIVATE_TMPFS = {"/tmp": "1777", "/var/tmp": "1777", "/dev/shm": "1777", "/run": "0755"}

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}  # syscall numbers: glibc has no wrapper


_shared: Path | None = None


def share_with_students(path: Path | None) -> None:
    """The supervisor's call: ``path`` (its own, mode 0755) is bound into every student process of the
    submission it grades (the student owns nothing in it); None when it is done."""
    global _shared
    _shared = path


def shared_dir() -> Path:
    """Where a check puts files for the student's code (a root filesystem to run, a directory to unpack into):
    while a submission is graded, the directory every student process of it sees at the same path; else the
    temporary directory."""
    import tempfile

    return _shared if _shared is not None else Path(tempfile.gettempdir())


def libc_call(name: str, *args: object) -> int:
    """Call a libc function (strings encoded); an OSError naming it and its arguments when it returns -1."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(getattr(libc, name)(*[a.encode() if isinstance(a, str) else a for a in args]))
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args!r}: {os.strerror(errno)}")
    return result


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc_call("mount", source, target, fstype, ctypes.c_ulong(flags), data)


def student_readonly() -> tuple[str, ...]:
    """What a student process needs to read besides the system: this Python, its packages, vlab, the guest
    images and their sources (``vm-images/``).

    Only those directories are bound, never the checkout around them (``labs/source`` is there).
    """
    import vlab
    from vlab.paths import images_dir, vm_images_src
    from vlab.qemu.template import templates_dir

    wanted = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    wanted.add(str(Path(vlab.__file__).resolve().parent))
    if vm_images_src().is_dir():  # the guest programs' sources: the toy VMM assembles them on demand
        wanted.add(str(vm_images_src().resolve()))
    if images_dir().is_dir():
        wanted.add(str(images_dir().resolve()))
    if templates_dir().is_dir():  # root's snapshot templates, read-only: graded VMs restore from them
        wanted.add(str(templates_dir().resolve()))
    wanted.update(p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p)
    return tuple(sorted(os.path.realpath(p) for p in wanted))


def _bind(source: str, root: str, *, writable: bool) -> None:
    """Bind ``source`` at the same path under ``root`` (a symlink is recreated as one, pointing alike)."""
    target = root + source
    if os.path.islink(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.symlink(os.readlink(source), target)
        return
    if not os.path.exists(source):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    _mount(source, target, None, _MS_BIND | _MS_REC)
    flags = _MS_BIND | _MS_REMOUNT | _MS_NOSUID | (0 if writable else _MS_RDONLY)
    with contextlib.suppress(OSError):  # a device node must keep its dev flag; it stays as the host has it
        _mount(None, target, None, flags | (0 if source.startswith("/dev/") else _MS_NODEV))


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside another one (bound already with it), shortest first."""
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def remount_proc() -> None:
    """In a new pid namespace, after a mount namespace of its own: a ``/proc`` that shows only that namespace.

    Mounted over the old one, which stays hidden below it: in a user namespace the kernel lets a ``proc`` be
    mounted only where one is already fully visible, and the process it is for has no right to unmount it.
    """
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV)


def build_root(stage: str, *, workdir: str, writable: Iterable[str] = (), readonly: Iterable[str] = ()) -> None:
    """Replace this mount namespace's root by an allow-list root assembled on ``stage``, and enter it."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing below propagates back to the host
    _mount("tmpfs", stage, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
    os.makedirs(stage + "/dev", exist_ok=True)
    _mount("tmpfs", stage + "/dev", "tmpfs", _MS_NOSUID, "mode=0755,size=64k")
    for name in _DEVICES:
        _bind("/dev/" + name, stage, writable=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(target, f"{stage}/dev/{name}")
    for path, mode in _PRIVATE_TMPFS.items():
        os.makedirs(stage + path, exist_ok=True)
        _mount("tmpfs", stage + path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode={mode},size=512m")
    for path in _outermost([*SYSTEM_READONLY, *readonly]):
        _bind(path, stage, writable=False)
    for path in _outermost([workdir, *writable]):  # last: the working directory may be below /tmp
        _bind(path, stage, writable=True)
    os.makedirs(stage + "/proc", exist_ok=True)
    _mount("proc", stage + "/proc", "proc", _MS_NOSUID | _MS_NODEV)
    os.makedirs(stage + "/.old", exist_ok=True)
    libc_call("syscall", ctypes.c_long(_PIVOT_ROOT[os.uname().machine]), stage, stage + "/.old")
    os.chdir("/")
    libc_call("umount2", "/.old", _MNT_DETACH)
    os.rmdir("/.old")
    _mount(None, "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
