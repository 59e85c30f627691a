"""The one /proc reader, on real processes: awkward command names, zombies, trees, gone pids."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from vlab.host import procfs


def test_a_command_name_with_spaces_and_parentheses_parses(tmp_path: Path) -> None:
    odd = tmp_path / "a) (b c"
    shutil.copy("/bin/sleep", odd)
    child = subprocess.Popen([str(odd), "30"])
    try:
        time.sleep(0.1)
        stat = procfs.read_stat(child.pid)
        assert stat is not None and stat.comm == "a) (b c" and stat.ppid == os.getpid()
        assert stat.state in "RS" and procfs.start_time(child.pid) == stat.start_time
        assert procfs.alive(child.pid) and procfs.owner_uid(child.pid) == os.geteuid()
        assert procfs.cmdline(child.pid) == [str(odd), "30"]
        assert procfs.exe(child.pid) == str(odd)
        assert child.pid in procfs.descendants(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_not_alive_and_a_gone_pid_is_none() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while (stat := procfs.read_stat(child.pid)) is not None and stat.state != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not procfs.alive(child.pid)
    assert child.pid not in procfs.descendants(os.getpid())
    assert child.pid in procfs.descendants(os.getpid(), include_zombies=True)
    child.wait()
    assert procfs.read_stat(child.pid) is None and procfs.start_time(child.pid) is None
    assert procfs.rss_bytes(child.pid) is None and procfs.cmdline(child.pid) is None


def test_own_process_facts() -> None:
    me = os.getpid()
    assert (procfs.rss_bytes(me) or 0) > 1024 * 1024
    assert (procfs.environ(me) or {}).get("PATH") == os.environ.get("PATH")
    assert (procfs.meminfo_kib("MemTotal") or 0) > 0
    assert procfs.meminfo_kib("NoSuchKey") is None
    stat = procfs.read_stat(me, me)  # the main thread, as /proc/<pid>/task/<tid>/stat
    assert stat is not None and stat.cpu_seconds >= 0
