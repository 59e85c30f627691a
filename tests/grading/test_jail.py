"""The jail around student processes and the sweep that ends them, on real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vlab.grading.jail import Cgroup, JailSpec, descendants, python_paths, sweep

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="uid switching, namespaces and cgroups need root")


def _spec(tmp_path: Path, **changes: object) -> JailSpec:
    base: dict[str, object] = dict(
        uid=None, address_space_mb=1024, cpu_seconds=30, file_mb=64, processes=64, workdir=str(tmp_path)
    )
    base.update(changes)
    return JailSpec(**base)  # type: ignore[arg-type]


def _run(spec: JailSpec, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(spec.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60)


def test_rlimits_hold_inside_the_jail(tmp_path: Path) -> None:
    done = _run(_spec(tmp_path), "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)")
    assert done.stdout.strip() == "1024"
    hog = _run(_spec(tmp_path), "bytearray(2 * 2**30)")
    assert "MemoryError" in hog.stderr


@root_only
def test_throwaway_uid_cannot_read_private_files_or_reach_the_network(tmp_path: Path) -> None:
    secret = tmp_path / "bundle.json"
    secret.write_text("hidden checks")
    secret.chmod(0o600)
    work = Path(tempfile.mkdtemp(prefix="vlab-jailtest-"))  # pytest's tmp dirs are private to root
    os.chown(work, 1_999_999_999, 1_999_999_999)
    spec = _spec(work, uid=1_999_999_999, new_netns=True, reveal=python_paths(), hide=(str(secret),))
    code = (
        "import os, socket\n"
        f"try:\n    open({str(secret)!r}).read(); print('READ')\nexcept OSError as e:\n    print(type(e).__name__)\n"
        "print(os.getuid())\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
    )
    try:
        done = _run(spec, code)
    finally:
        shutil.rmtree(work)
    lines = done.stdout.split("\n")
    assert lines[0] in ("PermissionError", "FileNotFoundError"), done.stderr
    assert lines[1] == "1999999999"
    assert lines[2] == "['lo']"


@root_only
def test_cgroup_limits_processes_and_is_removed(tmp_path: Path) -> None:
    group = Cgroup.create(f"vlab-test-{os.getpid()}", memory_mb=256, processes=8, cpu_percent=50)
    if group is None:
        pytest.skip("no usable cgroup v1 hierarchy here")
    try:
        code = (
            "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            import time; os.closerange(0, 1024); time.sleep(60)\n"
            "        n += 1\nexcept OSError:\n    print(n)\n"
        )
        done = _run(_spec(tmp_path, cgroup_procs=group.procs_files), code)
        assert 1 <= int(done.stdout.split()[0]) < 8
        assert group.counter("pids", "pids.events", "max") >= 1
        sweep(group)
        assert group.members() == set()
    finally:
        group.remove()
    assert not any(p.exists() for p in group.paths.values())


def test_sweep_kills_daemonized_descendants() -> None:
    # a grandchild that double-forks away into its own session, like `qemu -daemonize`
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\n"
    from vlab.grading.jail import become_subreaper

    if not become_subreaper():
        pytest.skip("no child subreaper on this system")
    try:
        subprocess.run([sys.executable, "-c", code], check=True)
        time.sleep(0.2)
        orphans = descendants(os.getpid())
        assert orphans, "the daemonized process should have been re-parented to us"
        killed = sweep(None)
        assert {p.pid for p in killed} >= orphans
        assert descendants(os.getpid()) == set()
    finally:
        # Stop being a subreaper: later tests in this process expect orphans to go to init (and be reaped).
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, off


@root_only
def test_cgroup_memory_limit_kills_what_the_rlimit_lets_through(tmp_path: Path) -> None:
    group = Cgroup.create(f"vlab-test-mem-{os.getpid()}", memory_mb=64, processes=16, cpu_percent=100)
    if group is None or "memory" not in group.paths:
        pytest.skip("no usable memory cgroup here")
    try:
        touch = "block = bytearray(200 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\nprint('survived')"
        done = _run(_spec(tmp_path, cgroup_procs=group.procs_files), touch)
        assert done.returncode == -9 and "survived" not in done.stdout
        assert group.counter("memory", "memory.oom_control", "oom_kill") >= 1
    finally:
        sweep(group)
        group.remove()
