"""cgroup probing on fake trees, and a real child group where the host offers one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.host.cgroups import Cgroup, CgroupSupport, detect_cgroups


def fake_v1_host(tmp_path: Path) -> Path:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("4:memory:/job7\n1:cpu:/\n8:pids:/\n0::/\n")
    for name, group in (("memory", "job7"), ("cpu", ""), ("pids", "")):
        path = tmp_path / "sys" / "fs" / "cgroup" / name / group
        path.mkdir(parents=True, exist_ok=True)
        (path.parent if group else path).joinpath("tasks").write_text("")
    unified = tmp_path / "sys" / "fs" / "cgroup" / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("")
    return tmp_path


def test_v1_controllers_are_found_under_the_process_own_group(tmp_path: Path) -> None:
    support = detect_cgroups(fake_v1_host(tmp_path))
    assert set(support.v1) == {"cpu", "memory", "pids"}
    assert support.v1["memory"].name == "job7"
    assert support.v2 == {}
    assert support.describe() == "cgroup v1: cpu, memory, pids; cgroup v2: none"


def test_v2_with_delegated_controllers(tmp_path: Path) -> None:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/user.slice/me\n")
    group = tmp_path / "sys" / "fs" / "cgroup" / "user.slice" / "me"
    group.mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "cgroup" / "cgroup.controllers").write_text("cpu memory pids io\n")
    (group / "cgroup.controllers").write_text("cpu pids\n")
    support = detect_cgroups(tmp_path)
    assert set(support.v2) == {"cpu", "pids"}
    assert support.where("memory") is None


def test_missing_controller_is_a_clear_error() -> None:
    with pytest.raises(VlabError) as err:
        Cgroup("vlab-test", ("cpu",), support=CgroupSupport())
    assert "cpu controller" in str(err.value) and "fix:" in str(err.value)


@pytest.mark.skipif(not detect_cgroups().where("pids"), reason="this host offers no writable pids cgroup")
def test_real_pids_limit_refuses_a_fork() -> None:
    with Cgroup(f"vlab-test-{os.getpid()}", ("pids",)) as group:
        group.set_pids_max(1)
        script = "import os, sys\ntry:\n    os.fork()\nexcept OSError:\n    sys.exit(3)\nelse:\n    os._exit(0)\n"
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.stdin.readline()\n{script}"], stdin=subprocess.PIPE, text=True
        )
        group.add(proc.pid)
        proc.communicate("go\n", timeout=20)
        assert proc.returncode == 3
        assert group.pids_refused() >= 1


@pytest.mark.skipif(not detect_cgroups().where("cpu"), reason="this host offers no writable cpu cgroup")
def test_real_cpu_quota_throttles_a_busy_loop() -> None:
    with Cgroup(f"vlab-test-cpu-{os.getpid()}", ("cpu",)) as group:
        group.set_cpu_quota(0.2)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time\nsys.stdin.readline()\n"
                "end = time.monotonic() + 0.5\nwhile time.monotonic() < end: pass",
            ],
            stdin=subprocess.PIPE,
            text=True,
        )
        group.add(proc.pid)
        proc.communicate("go\n", timeout=20)
        assert group.throttled_periods() > 0


@pytest.mark.skipif(not detect_cgroups().where("memory"), reason="this host offers no writable memory cgroup")
def test_real_memory_limit_oom_kills_a_hog() -> None:
    with Cgroup(f"vlab-test-mem-{os.getpid()}", ("memory",)) as group:
        group.set_memory_limit(64 << 20)
        proc = subprocess.Popen([sys.executable, "-c", "import sys\nsys.stdin.readline()\nx = bytearray(200 << 20)"],
                                stdin=subprocess.PIPE, text=True)
        group.add(proc.pid)
        proc.communicate("go\n", timeout=30)
        assert proc.returncode == -9
        assert group.oom_kills() >= 1


@pytest.mark.skipif(not detect_cgroups().where("cpu"), reason="this host offers no writable cpu cgroup")
def test_a_released_live_thread_lets_the_group_be_removed() -> None:
    import threading

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        group = Cgroup(f"vlab-test-rel-{os.getpid()}", ("cpu",))
        assert worker.native_id is not None
        group.add_thread(worker.native_id)
        _, path = group.dirs["cpu"]
        assert str(worker.native_id) in (path / "tasks").read_text().split()
        group.release([worker.native_id])
        group.remove()
        assert not path.exists()
    finally:
        stop.set()
        worker.join()
