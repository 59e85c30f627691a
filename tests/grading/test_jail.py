"""The jail around student processes and the sweep that ends them, on real processes and namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grading.conftest import jail_spec
from tests.grading.unprivileged import NOBODY, available, unprivileged
from tests.host.cgroup2 import real_v2_parent, wait_for_event
from vlab.grading.jail import Cgroup, JailSpec, namespace_members, sweep
from vlab.host.cgroups import CgroupSupport

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="uid switching, namespaces and cgroups need root")

PROBE = """
import json, os, socket, sys
seen = {}
for path in sys.argv[1:]:
    try:
        seen[path] = "READ " + open(path).read()[:20]
    except OSError as exc:
        seen[path] = type(exc).__name__
def tries(action):
    try:
        action()
        return "done"
    except OSError as exc:
        return type(exc).__name__
print(json.dumps({
    "uid": os.getuid(), "pid": os.getpid(), "files": seen,
    "interfaces": sorted(n for _, n in socket.if_nameindex()),
    "mountinfo": open("/proc/self/mountinfo").read(),
    "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "write_usr": tries(lambda: open("/usr/vlab-jail-test", "w")),
    "write_tmp": tries(lambda: open("/tmp/x", "w").write("x")),
    "cap_eff": [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1],
}))
"""


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")


def _probe(spec: JailSpec, *paths: str, wrap: object = None) -> dict[str, object]:
    import json

    argv = spec.command([sys.executable, "-c", PROBE, *paths])
    done = _run(wrap(argv) if callable(wrap) else argv)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_rlimits_hold_inside_the_jail(place: Path) -> None:
    spec = jail_spec(place)
    done = _run(
        spec.command([sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)"])
    )
    assert done.stdout.strip() == "1024"
    hog = _run(spec.command([sys.executable, "-c", "bytearray(2 * 2**30)"]))
    assert "MemoryError" in hog.stderr


def _canaries(place: Path) -> tuple[Path, Path]:
    course = Path(__file__).resolve().parents[2] / "labs" / "source"
    secret = place / "instructor-secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    return course, secret


def _assert_allow_list(seen: dict[str, object], course: Path, secret: Path) -> None:
    files = seen["files"]
    assert isinstance(files, dict)
    assert not any(str(v).startswith("READ") for v in files.values()), files
    assert files[str(secret)] == "FileNotFoundError"  # not hidden: absent from the sandbox's root
    assert str(course) not in str(seen["mountinfo"]) and "labs" not in str(seen["mountinfo"])
    assert seen["interfaces"] == ["lo"]
    assert seen["write_usr"] in ("OSError", "PermissionError")  # read-only
    assert seen["write_tmp"] == "done"  # a private tmpfs
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["processes"] == [1, 2]  # its own pid namespace: the jail's init and itself


@root_only
def test_root_mode_sees_only_the_allow_list_as_a_throwaway_uid(place: Path) -> None:
    course, secret = _canaries(place)
    os.chown(place / "work", 1_999_999_999, 1_999_999_999)
    spec = jail_spec(place, mode="root", uid=1_999_999_999)
    seen = _probe(spec, str(secret), str(course / "01-create-vm.ipynb"), "/etc/shadow", "/root/.bash_history")
    assert seen["uid"] == 1_999_999_999
    _assert_allow_list(seen, course, secret)
    assert not os.path.exists("/tmp/x") or os.stat("/tmp/x").st_uid != 1_999_999_999


@pytest.mark.skipif(not available(), reason="needs root to set up the unprivileged user, unshare and setpriv")
def test_userns_mode_gives_an_unprivileged_grader_the_same_allow_list(place: Path) -> None:
    course, secret = _canaries(place)
    os.chown(place / "work", NOBODY, NOBODY)
    os.chown(place / "stage", NOBODY, NOBODY)
    (place / "root").mkdir()
    spec = jail_spec(place, mode="userns")
    seen = _probe(
        spec, str(secret), str(course / "01-create-vm.ipynb"), wrap=lambda argv: unprivileged(argv, place / "root")
    )
    assert seen["uid"] == 0  # "root" of a user namespace that owns nothing, without capabilities
    _assert_allow_list(seen, course, secret)


def test_userns_mode_refuses_to_run_as_root(place: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can be refused")
    done = _run(jail_spec(place, mode="userns").command([sys.executable, "-c", "print('ran')"]))
    assert "ran" not in done.stdout and "userns mode is for an unprivileged grader" in done.stderr


@root_only
def test_cgroup_limits_processes_and_is_removed(place: Path) -> None:
    group = Cgroup.create(f"vlab-test-{os.getpid()}", memory_mb=256, processes=8, cpu_percent=50)
    if group is None:
        pytest.skip("no usable cgroup hierarchy here")
    try:
        code = (
            "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
            "            import time; os.closerange(0, 1024); time.sleep(60)\n"
            "        n += 1\nexcept OSError:\n    print(n)\n"
        )
        done = _run(jail_spec(place, cgroup_procs=group.procs_files).command([sys.executable, "-c", code]))
        assert 1 <= int(done.stdout.split()[0]) < 8
        assert group.counter("pids", "pids.events", "max") >= 1
        sweep(group)
        assert group.members() == set()
    finally:
        group.remove()
    assert not any(p.exists() for p in group.paths.values())


# a daemon that double-forks into its own session, and a process whose main thread has exited while another
# thread runs on (it shows as a zombie in /proc, which is how the old sweep missed it)
ESCAPES = """
import os, threading, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
if os.fork() == 0:
    threading.Thread(target=time.sleep, args=(300,)).start()
    import ctypes
    ctypes.CDLL(None).syscall(60, 0)  # exit(2) of the main thread only
print("started", flush=True)
time.sleep(300)
"""


@root_only
def test_sweep_kills_everything_in_the_namespace_and_cgroup(place: Path) -> None:
    os.chown(place / "work", 1_999_999_998, 1_999_999_998)
    group = Cgroup.create(f"vlab-test-sweep-{os.getpid()}", memory_mb=256, processes=32, cpu_percent=100)
    spec = jail_spec(place, mode="root", uid=1_999_999_998, cgroup_procs=group.procs_files if group else ())
    proc = subprocess.Popen(spec.command([sys.executable, "-c", ESCAPES]), stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(0.3)
        members = namespace_members(proc.pid)
        assert len(members) >= 5  # init, the command, the daemon, the thread-only process (and its parent)
        killed = sweep(group, [proc.pid])
        assert {p.pid for p in killed} >= members
        time.sleep(0.1)
        assert all(not Path(f"/proc/{pid}").exists() or _state(pid) == "Z" for pid in members)
        assert group is None or group.members() == set()
    finally:
        proc.kill()
        proc.wait()
        if group is not None:
            sweep(group)
            group.remove()


def _state(pid: int) -> str:
    return _state_of(f"/proc/{pid}/stat")


@root_only
def test_cgroup_memory_limit_kills_what_the_rlimit_lets_through(place: Path) -> None:
    group = Cgroup.create(f"vlab-test-mem-{os.getpid()}", memory_mb=64, processes=16, cpu_percent=100)
    if group is None or "memory" not in group.paths:
        pytest.skip("no usable memory cgroup here")
    try:
        touch = "block = bytearray(200 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\nprint('survived')"
        done = _run(jail_spec(place, cgroup_procs=group.procs_files).command([sys.executable, "-c", touch]))
        assert done.returncode == -9 and "survived" not in done.stdout
        assert group.counter("memory", "memory.oom_control", "oom_kill") >= 1
    finally:
        sweep(group)
        group.remove()


# cgroup v2. This host binds memory, pids and cpu to cgroup v1, so the tests mount a cgroup2 hierarchy of their
# own (tests/host/cgroup2.py): its core files (cgroup.procs, cgroup.freeze, cgroup.events) work without any
# controller, so membership, freezing, killing and removal run for real; limits are written on a fake tree.
V2_PREFIX = f"vlab-test-jail-v2-{os.getpid()}-"

# the same escapes as ESCAPES, reporting their pids: a daemon that double-forked into its own session, a process
# whose main thread has exited while another thread runs
V2_ESCAPES = """
import ctypes, os, threading, time
middle = os.fork()
if middle == 0:
    os.setsid()
    daemon = os.fork()
    if daemon == 0:
        time.sleep(300)
    print(daemon, flush=True)
    os._exit(0)
os.waitpid(middle, 0)
threaded = os.fork()
if threaded == 0:
    threading.Thread(target=time.sleep, args=(300,)).start()
    ctypes.CDLL(None).syscall(60, 0)  # exit(2) of the main thread only
print(threaded, flush=True)
time.sleep(300)
"""


def _v2_support(parent: Path) -> CgroupSupport:
    """What detect_cgroups reports on a v2 host: every controller in this process's own group."""
    return CgroupSupport(v2=dict.fromkeys(Cgroup.CONTROLLERS, parent))


@pytest.fixture
def v2_parent(tmp_path: Path) -> Iterator[Path]:
    with real_v2_parent(tmp_path / "cgroup2", V2_PREFIX) as parent:
        yield parent


def _tasks(pid: int) -> list[str]:
    """States of the threads of process ``pid`` (empty once it is gone)."""
    try:
        return [_state_of(f"/proc/{pid}/task/{tid}/stat") for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _parent(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rfind(")") + 2 :].split()[1])


def _state_of(stat: str) -> str:
    try:
        text = Path(stat).read_text()
    except OSError:
        return "gone"
    return text[text.rfind(")") + 2]


def test_sweep_kills_a_real_v2_group_by_membership_alone(place: Path, v2_parent: Path) -> None:
    """On a real cgroup2 group, with no pid namespace (mode ``none``): the group is the only way to find the
    escapes, so the sweep must freeze it (``cgroup.freeze``) and kill every member it lists."""
    group = Cgroup(f"{V2_PREFIX}sweep", Cgroup.CONTROLLERS, _v2_support(v2_parent))
    path = v2_parent / f"{V2_PREFIX}sweep"
    assert set(group.dirs.values()) == {(2, path)}
    spec = jail_spec(place, cgroup_procs=group.procs_files)
    proc = subprocess.Popen(spec.command([sys.executable, "-c", V2_ESCAPES]), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        daemon, threaded = int(proc.stdout.readline()), int(proc.stdout.readline())
        time.sleep(0.2)
        escapes = {proc.pid, daemon, threaded}
        assert group.members() == escapes  # the jail joined the group before the exec; the rest inherited it
        assert os.getsid(daemon) != os.getsid(proc.pid) and _parent(daemon) not in escapes  # out of the tree
        assert sorted(_tasks(threaded)) == ["S", "Z"]  # main thread exited, another runs on
        group.freeze(True)
        assert wait_for_event(path, "frozen 1")
        group.freeze(False)
        assert wait_for_event(path, "frozen 0")
        killed = sweep(group)
        assert {p.pid for p in killed} == escapes
        assert group.members() == set()
        assert wait_for_event(path, "populated 0")
        assert all(set(_tasks(pid)) <= {"Z"} for pid in escapes)  # dead (a zombie until its parent reaps it)
        group.remove()
        assert not path.exists()
    finally:
        proc.kill()
        proc.wait()
        sweep(group)
        group.remove()


def test_create_on_a_real_v2_group_without_controllers_gives_none_and_leaves_nothing(v2_parent: Path) -> None:
    """Real cgroup2 without the controllers (bound to v1 here): no ``memory.max`` to write, so no group."""
    assert "memory" not in (v2_parent / "cgroup.controllers").read_text().split()
    group = Cgroup.create(
        f"{V2_PREFIX}create", memory_mb=64, processes=16, cpu_percent=50, support=_v2_support(v2_parent)
    )
    assert group is None
    assert not (v2_parent / f"{V2_PREFIX}create").exists()


def test_create_writes_v2_limits_and_adds_no_v1_freezer_on_a_fake_tree(tmp_path: Path) -> None:
    """On a *fake* v2 tree: the controller files (``memory.max``, ``pids.max``, ``cpu.max``) exist only where the
    controllers are enabled on cgroup v2, and this host's kernel has them bound to v1. A v2 group freezes
    through its own ``cgroup.freeze``, so no group is made in the host's v1 freezer hierarchy."""
    parent = tmp_path / "fake-cgroup2"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text("")
    group = Cgroup.create("vlab-test-fake", memory_mb=64, processes=16, cpu_percent=50, support=_v2_support(parent))
    assert group is not None
    path = parent / "vlab-test-fake"
    assert group.dirs == dict.fromkeys(Cgroup.CONTROLLERS, (2, path))  # no "freezer"
    assert (path / "memory.max").read_text() == str(64 << 20)
    assert (path / "pids.max").read_text() == "16"
    assert (path / "cpu.max").read_text() == "50000 100000"
    group.freeze(True)
    assert (path / "cgroup.freeze").read_text() == "1"
    group.freeze(False)
    assert (path / "cgroup.freeze").read_text() == "0"
