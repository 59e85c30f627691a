"""Suite-wide guards: no QEMU process started by this test session outlives it.

Every process the session starts inherits ``VLAB_TEST_SESSION``; a QEMU still
running with this session's value at the end is a leak (it was orphaned, or
never stopped). QEMUs of other sessions on the same machine are ignored.

Notebooks under ``tests/`` are test *data* (grading submissions, some hostile), never collected by nbval.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

collect_ignore_glob = ["**/*.ipynb"]

SESSION_MARK = f"VLAB_TEST_SESSION={uuid.uuid4().hex}".encode()
os.environ["VLAB_TEST_SESSION"] = SESSION_MARK.split(b"=", 1)[1].decode()


def session_qemu_pids() -> set[int]:
    """PIDs of running qemu-system-* processes that carry this session's mark in their environment."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
            if b"qemu-system" not in os.path.basename(argv0):
                continue
            if SESSION_MARK in (proc / "environ").read_bytes().split(b"\0"):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_behind() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    while (leaked := session_qemu_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leaked, f"QEMU processes left running by the test session: {sorted(leaked)}"
