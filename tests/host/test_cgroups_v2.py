"""cgroup v2: group membership, threads and removal on a real cgroup2 mount; limits and counters on a fake tree.

This host binds cpu, memory and pids to cgroup v1, so :func:`~vlab.host.cgroups.detect_cgroups` finds no v2
controller and no v2 path would ever run. The tests mount a cgroup2 hierarchy of their own
(:mod:`tests.host.cgroup2`) and point :class:`~vlab.host.cgroups.Cgroup` at it through ``support``, as
:func:`detect_cgroups` would on a v2 host (every controller in the process's own group).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.cgroup2 import real_v2_parent, wait_for_event
from vlab.host.cgroups import CONTROLLERS, Cgroup, CgroupSupport

PREFIX = f"vlab-test-v2-{os.getpid()}-"


def v2_support(parent: Path, controllers: tuple[str, ...] = CONTROLLERS) -> CgroupSupport:
    """What detect_cgroups reports on a v2 host: each controller in this process's own group ``parent``."""
    return CgroupSupport(v2=dict.fromkeys(controllers, parent))


@pytest.fixture
def v2_parent(tmp_path: Path) -> Iterator[Path]:
    with real_v2_parent(tmp_path / "cgroup2", PREFIX) as parent:
        yield parent


def test_real_v2_group_takes_a_process_and_is_removed_when_it_exits(v2_parent: Path) -> None:
    """Real cgroup2: mkdir (the ``+controller`` write to ``cgroup.subtree_control`` is refused without the
    controllers and ignored), ``cgroup.procs``, ``cgroup.events``, :meth:`existing`-style lookup, rmdir."""
    group = Cgroup(f"{PREFIX}procs", support=v2_support(v2_parent))
    assert {version for version, _ in group.dirs.values()} == {2}
    path = v2_parent / f"{PREFIX}procs"
    assert set(group.paths.values()) == {path} and path.is_dir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        group.add(sleeper.pid)
        assert group.members() == {sleeper.pid}
        assert wait_for_event(path, "populated 1")
        lines = Path(f"/proc/{sleeper.pid}/cgroup").read_text().splitlines()
        assert any(line.startswith("0::") and line.endswith(f"/{path.name}") for line in lines)
        again = Cgroup(f"{PREFIX}procs", support=v2_support(v2_parent), required=False, create=False)
        assert again.paths == group.paths and again.members() == {sleeper.pid}
    finally:
        assert sleeper.stdin is not None
        sleeper.stdin.close()
        sleeper.wait(timeout=20)
    group.remove()  # waits for the exited member to leave the group
    assert not path.exists()
    gone = Cgroup(f"{PREFIX}procs", support=v2_support(v2_parent), required=False, create=False)
    assert gone.dirs == {}


def test_real_v2_threaded_group_takes_one_thread_and_releases_it(v2_parent: Path) -> None:
    """Real cgroup2: :meth:`add_thread` turns the group threaded (``cgroup.type``) and moves a single thread
    (``cgroup.threads``); :meth:`release` moves it back to the parent, so the group can be removed while it runs."""
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert worker.native_id is not None
        group = Cgroup(f"{PREFIX}threads", ("cpu",), support=v2_support(v2_parent))
        path = group.paths["cpu"]
        group.add_thread(worker.native_id)
        assert (path / "cgroup.type").read_text().strip() == "threaded"
        assert (path / "cgroup.threads").read_text().split() == [str(worker.native_id)]
        own = Path(f"/proc/self/task/{worker.native_id}/cgroup").read_text().splitlines()
        assert any(line.startswith("0::") and line.endswith(f"/{path.name}") for line in own)
        assert threading.get_native_id() not in {int(t) for t in (path / "cgroup.threads").read_text().split()}
        group.release([worker.native_id])
        assert (path / "cgroup.threads").read_text().split() == []
        group.remove()
        assert not path.exists()
    finally:
        stop.set()
        worker.join()


@pytest.fixture
def fake_v2_parent(tmp_path: Path) -> Path:
    """A *fake* v2 group directory (plain files).

    A fake because the controller files (``memory.max``, ``memory.events``, ``pids.max``, ``pids.events``,
    ``cpu.max``, ``cpu.stat``'s throttling keys) exist only where the controller is enabled on the v2
    hierarchy, and this host's kernel has cpu, memory and pids bound to cgroup v1: they cannot be enabled on
    v2 here (the real mount's ``cgroup.controllers`` lacks them). The file names and formats are the kernel's
    (Documentation/admin-guide/cgroup-v2.rst).
    """
    parent = tmp_path / "fake-cgroup2"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text("cpu memory pids\n")
    (parent / "cgroup.subtree_control").write_text("")
    return parent


def test_v2_limits_are_written_in_v2_form_on_a_fake_tree(fake_v2_parent: Path) -> None:
    group = Cgroup("vlab-test-limits", support=v2_support(fake_v2_parent))
    path = fake_v2_parent / "vlab-test-limits"
    assert group.paths == dict.fromkeys(CONTROLLERS, path)
    group.set_memory_limit(64 << 20)
    group.set_pids_max(16)
    group.set_cpu_quota(0.2)
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "pids.max").read_text() == "16"
    assert (path / "cpu.max").read_text() == "20000 100000"
    written = {p.name for p in path.iterdir()}
    assert written == {"memory.max", "pids.max", "cpu.max"}  # no v1 file (limit_in_bytes, memsw, cfs_*)
    assert set(group.procs_files) == {str(path / "cgroup.procs")}
    assert (fake_v2_parent / "cgroup.subtree_control").read_text().startswith("+")  # asked to enable it


def test_v2_counters_read_the_v2_event_files_on_a_fake_tree(fake_v2_parent: Path) -> None:
    group = Cgroup("vlab-test-counters", support=v2_support(fake_v2_parent))
    path = fake_v2_parent / "vlab-test-counters"
    assert (group.oom_kills(), group.pids_refused(), group.throttled_periods()) == (0, 0, 0)  # no files yet
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\noom_group_kill 5\n")
    (path / "pids.events").write_text("max 4\nmax.imposed 9\n")
    (path / "cpu.stat").write_text(
        "usage_usec 500\nuser_usec 400\nsystem_usec 100\nnr_periods 12\nnr_throttled 6\nthrottled_usec 300\n"
    )
    assert group.oom_kills() == 2  # memory.events "oom_kill", not oom / oom_group_kill / max
    assert group.pids_refused() == 4  # pids.events "max", not max.imposed
    assert group.throttled_periods() == 6
