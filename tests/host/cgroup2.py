"""A real cgroup2 hierarchy for tests, even on a host whose controllers are all bound to cgroup v1.

As root, ``mount -t cgroup2`` works on any kernel with cgroup2: it shows the single v2 hierarchy (the
same one as ``/sys/fs/cgroup/unified`` where that is mounted). Its *core* files (``cgroup.procs``,
``cgroup.threads``, ``cgroup.type``, ``cgroup.freeze``, ``cgroup.events``, ``cgroup.kill``) need no
controller, so membership, freezing and removal run for real; controller files (``memory.max``, ...)
exist only where the controller is enabled on v2, which a v1-bound controller cannot be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["cgroup2_mount", "own_v2_group", "wait_for_event", "real_v2_parent"]

_HOLD = 'mount -t cgroup2 none "$1" && echo mounted && exec cat >/dev/null'


@contextlib.contextmanager
def cgroup2_mount(where: Path) -> Iterator[Path]:
    """Mount cgroup2 at ``where`` in a private mount namespace held by a helper process; yield its path.

    The path leads through ``/proc/HOLDER/root``, so the mount never appears in this process's mount
    table; it ends with the helper (at the end of the block, or when this process dies: the helper's
    stdin closes). Skips the test where not root or where the mount fails.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a cgroup2 hierarchy needs root")
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: no private mount namespace for the cgroup2 mount")
    where = where.resolve()
    where.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HOLD, "sh", str(where)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None and holder.stderr is not None
    mounted = holder.stdout.readline().strip() == "mounted"
    try:
        if not mounted:
            holder.stdin.close()
            holder.wait(timeout=10)
            pytest.skip(f"cannot mount cgroup2 here: {holder.stderr.read().strip() or holder.returncode}")
        yield Path(f"/proc/{holder.pid}/root") / where.relative_to("/")
    finally:
        with contextlib.suppress(BrokenPipeError):
            holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
        holder.stderr.close()


def own_v2_group(mount: Path) -> Path:
    """This process's group (``0::PATH`` in ``/proc/self/cgroup``) in the v2 hierarchy mounted at ``mount``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    pytest.skip("this process has no cgroup v2 membership")


def wait_for_event(group: Path, line: str, timeout: float = 5.0) -> bool:
    """Whether ``cgroup.events`` of ``group`` shows ``line`` (e.g. ``frozen 1``) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in (group / "cgroup.events").read_text().splitlines():
            return True
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def real_v2_parent(where: Path, prefix: str) -> Iterator[Path]:
    """This process's own group in a freshly mounted cgroup2 hierarchy (see :func:`cgroup2_mount`).

    On the way out, any child group named ``prefix...`` that a test left behind is emptied (``cgroup.kill``)
    and removed (the hierarchy is shared with the host: other groups are not touched), then the block fails
    if one had been left, or if the mount is visible in ``/proc/mounts``.
    """
    with cgroup2_mount(where) as mount:
        parent = own_v2_group(mount)
        try:
            yield parent
        finally:
            left = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith(prefix))
            for group in left:
                _empty_and_remove(group)
    assert not left, f"cgroups left behind: {[p.name for p in left]}"
    assert str(where.resolve()) not in Path("/proc/mounts").read_text(), "the cgroup2 mount leaked"


def _empty_and_remove(group: Path) -> None:
    for child in (p for p in group.iterdir() if p.is_dir()):
        _empty_and_remove(child)
    with contextlib.suppress(OSError):
        (group / "cgroup.kill").write_text("1")
    with contextlib.suppress(OSError):
        (group / "cgroup.freeze").write_text("0")
    deadline = time.monotonic() + 5
    while group.exists() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            group.rmdir()
        time.sleep(0.02)
