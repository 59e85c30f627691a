"""Lab 08's helpers and the notebook's reference runtime, on the real kernel, attacked.

The runtime itself is the solution of q1 in ``labs/source/08-containers.ipynb``: these tests execute that cell
(one copy of the reference), as root and — through ``setpriv`` as uid 65534 — unprivileged, in a user namespace.
Each attack must be contained (or end in a clear VlabError), and nothing may be left behind: no mount, cgroup,
scratch directory or process.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vlab.errors import VlabError
from vlab.grading.seeds import practice_seed
from vlab.host import syscalls
from vlab.labs import containers as lab
from vlab.paths import runtime_dir

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "labs" / "source" / "08-containers.ipynb"
HOST = lab.support()
needs_ns = pytest.mark.skipif(not HOST.namespaces, reason=HOST.why)
needs_limits = pytest.mark.skipif(not HOST.namespaces or len(HOST.cgroups) < 3 or os.geteuid() != 0,
                                  reason="needs root and the memory, pids and cpu cgroup controllers")
Runtime = Callable[[Any, list[str], dict[str, Any]], lab.Completed]


def solution_source(question: str) -> str:
    """The source of the notebook's ``solution`` cell of ``question`` (markers included: they are comments)."""
    for cell in json.loads(SOURCE.read_text())["cells"]:
        text = "".join(cell["source"])
        if text.startswith(f"# vlab: solution {question}\n"):
            return "from vlab.labs import containers as lab\n" + text
    raise AssertionError(f"no solution cell for {question}")


@pytest.fixture(scope="module")
def run_container() -> Runtime:
    namespace: dict[str, Any] = {}
    exec(solution_source("q1"), namespace)
    runtime: Runtime = namespace["run_container"]
    return runtime


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return lab.build_rootfs(tmp_path / "rootfs")


@pytest.fixture(autouse=True)
def nothing_left() -> Any:
    yield
    left = lab.leftovers()
    lab.sweep()
    assert not any(left.values()), f"left behind: {left}"


def probe(run: Runtime, rootfs: Path, marker: Path, **limits: Any) -> dict[str, str]:
    command = (f'echo "pid=$$"; echo "host=$(hostname)"; echo "procs=$(ls -d /proc/[0-9]* | wc -l)"; '
               f'echo "links=$(ls /sys/class/net 2>/dev/null | wc -l)"; echo "root1=$(ls /proc/1/root | wc -l)"; '
               f'cat {marker} ../../../..{marker} /proc/1/root{marker} 2>/dev/null; echo x > {lab.SCRIBBLE_DIR}/x')
    done = run(rootfs, ["sh", "-c", command], {"hostname": "box-7", **limits})
    assert done.status == 0, done.output
    return {"raw": done.output, **dict(line.split("=", 1) for line in done.output.splitlines() if "=" in line)}


# ---------------------------------------------------------------------------------------------- isolation


@needs_ns
def test_the_reference_container_is_isolated_and_the_image_pristine(run_container: Runtime, rootfs: Path,
                                                                     tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("host-only-7f3a\n")
    before = lab.tree_digest(rootfs)
    seen = probe(run_container, rootfs, marker)
    assert seen["pid"] == "1" and seen["host"] == "box-7"
    assert int(seen["procs"]) <= 6, "the host's processes are visible"
    assert "host-only-7f3a" not in seen["raw"], "a host file was readable (plain, via .., via /proc/1/root)"
    assert int(seen["root1"]) < 20, "/proc/1/root is not the container's root"
    assert lab.tree_digest(rootfs) == before


@needs_ns
def test_symlinks_in_the_image_point_into_the_container_not_the_host(run_container: Runtime, rootfs: Path,
                                                                     tmp_path: Path) -> None:
    """An image whose files are absolute symlinks to host paths (and whose /dev/null, a bind-mount target,
    points at a host file) still shows only its own files, and changes nothing on the host."""
    marker = tmp_path / "host-secret"
    marker.write_text("host-only-symlink\n")
    (rootfs / "etc" / "evil").symlink_to(str(marker))
    (rootfs / "etc" / "up").symlink_to("../../../../../../..")
    (rootfs / "dev" / "null").unlink()
    (rootfs / "dev" / "null").symlink_to(str(marker))
    host_marker = marker.read_bytes()
    done = run_container(rootfs, ["sh", "-c", f"cat /etc/evil /etc/up{marker} 2>&1; ls /etc/up | wc -l"], {})
    assert "host-only-symlink" not in done.output
    assert marker.read_bytes() == host_marker


@needs_ns
def test_the_leaky_container_lets_the_notebooks_escape_out_and_the_reference_keeps_it_in(
        run_container: Runtime, rootfs: Path, tmp_path: Path) -> None:
    namespace: dict[str, Any] = {}
    exec(solution_source("q3"), namespace)
    secret = tmp_path / "escape-me"
    secret.write_text("the-host-secret-42\n")
    secret.chmod(0o644)
    command = namespace["escape_command"](str(secret))
    assert "the-host-secret-42" in lab.leaky_container(rootfs, command).output
    assert "the-host-secret-42" not in run_container(rootfs, ["sh", "-c", command], {}).output


@needs_ns
def test_a_failing_command_a_timeout_and_a_broken_image_leave_nothing(run_container: Runtime, rootfs: Path,
                                                                       tmp_path: Path) -> None:
    assert run_container(rootfs, ["sh", "-c", "exit 7"], {}).status == 7
    slow = run_container(rootfs, ["sh", "-c", "sleep 30 & sleep 30"], {"timeout": 1})
    assert slow.timed_out and slow.status == -signal.SIGKILL and slow.seconds < 5
    broken = run_container(tmp_path / "no-such-image", ["true"], {})
    assert broken.status == 125 and "VlabError" in broken.output and "mount(overlay" in broken.output
    missing = run_container(rootfs, ["no-such-program"], {})
    assert missing.status == 125 and "FileNotFoundError" in missing.output


@needs_ns
def test_a_killed_runtime_takes_its_container_with_it_and_sweep_removes_the_rest(rootfs: Path,
                                                                                 tmp_path: Path) -> None:
    script = tmp_path / "runtime.py"
    script.write_text(solution_source("q1") + textwrap.dedent(f"""
        print("started", flush=True)
        run_container({str(rootfs)!r}, ["sleep", "61.5"], {{"pids_max": 50}} if {len(HOST.cgroups) == 3 and
                      os.geteuid() == 0} else {{}})
        """))
    runtime = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert runtime.stdout is not None and runtime.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _sleepers():
            time.sleep(0.05)
        assert _sleepers(), "the container never started"
    finally:
        runtime.send_signal(signal.SIGKILL)
        runtime.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _sleepers():
        time.sleep(0.05)
    assert not _sleepers(), "the container outlived its runtime"
    removed = lab.sweep()  # the killed runtime's scratch directory (and cgroup) are stale now
    assert any(str(runtime.pid) in path for path in removed["scratch"])
    assert not [p for p in runtime_dir().glob(f"{lab.PREFIX}-{runtime.pid}-*")]


def _sleepers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\x0061.5\x00":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ---------------------------------------------------------------------------------------------- limits


@needs_limits
def test_limits_oom_kill_refuse_forks_and_contain_a_fork_bomb(run_container: Runtime, rootfs: Path) -> None:
    hog = run_container(rootfs, ["sh", "-c", "x=$(head -c 80000000 /dev/zero | tr '\\0' a); echo kept ${#x}"],
                        {"memory_mib": 32})
    assert "kept" not in hog.output and hog.status in (-signal.SIGKILL, 128 + signal.SIGKILL)
    forks = run_container(rootfs, ["sh", "-c", 'n=0; while [ $n -lt 60 ]; do sleep 5 & n=$((n+1)); echo $n; done'],
                          {"pids_max": 12})
    assert "can't fork" in forks.output
    started = [int(line) for line in forks.output.split() if line.isdigit()]
    assert 5 <= max(started) <= 11, forks.output  # pids.max counts the runtime's helper and the shell too
    bomb = run_container(rootfs, ["sh", "-c", "f(){ f|f& }; f; sleep 1"], {"pids_max": 20, "timeout": 5})
    assert "can't fork" in bomb.output and not bomb.timed_out  # refused, and over with its PID 1


@needs_limits
def test_cpu_quota_caps_cpu_time_seen_from_inside(run_container: Runtime, rootfs: Path) -> None:
    busy = 'i=0; while [ $i -lt 2 ]; do (while :; do :; done) & i=$((i+1)); done; sleep 1; kill $(jobs -p); wait; times'
    done = run_container(rootfs, ["sh", "-c", busy], {"cpu_quota": 0.2})
    user, system = done.output.split()[-2:]
    cpu = sum(int(t.split("m")[0]) * 60 + float(t.split("m")[1].rstrip("s")) for t in (user, system))
    assert 0.05 < cpu < 0.45, done.output  # 0.2 CPU for ~1 s; two loops would use up to 2 s without a quota


# ---------------------------------------------------------------------------------------------- unprivileged


@needs_ns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists(),
                    reason="needs root to drop to uid 65534 with setpriv, and the system python3")
def test_the_reference_runtime_works_rootless_as_an_unprivileged_user() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="vlab-l8-test-"))  # pytest's own tmp is private to root
    try:
        _rootless(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _rootless(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    marker = tmp_path / "host-secret"
    marker.write_text("unprivileged-host-secret\n")
    script = tmp_path / "rootless.py"
    script.write_text(solution_source("q1") + textwrap.dedent(f"""
        import json, tempfile
        box = Path(tempfile.mkdtemp())
        image = lab.build_rootfs(box / "rootfs")
        before = lab.tree_digest(image)
        done = run_container(image, ["sh", "-c", "echo $$ $(hostname) $(id -u); cat {marker};"
                                     " ls -d /proc/[0-9]* | wc -l; echo x > /bin/busybox"],
                             {{"hostname": "rootless-1"}})
        print(json.dumps({{"output": done.output, "status": done.status, "pristine": lab.tree_digest(image) == before,
                          "left": lab.leftovers()}}))
        lab._remove_tree(box)
        """))
    script.chmod(0o644)
    (tmp_path / "rt").mkdir(mode=0o700)
    os.chown(tmp_path / "rt", 65534, 65534)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "VLAB_RUNTIME": str(tmp_path / "rt")}
    done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           "/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                           f"exec(open({str(script)!r}).read())"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    first = result["output"].split()
    assert first[:3] == ["1", "rootless-1", "0"], result  # PID 1, own hostname, root inside (uid 65534 outside)
    assert "unprivileged-host-secret" not in result["output"]
    assert result["pristine"] and not any(result["left"].values())


# ---------------------------------------------------------------------------------------------- the helpers


def test_spawn_reports_a_childs_exception_caps_output_and_refuses_bad_timeouts() -> None:
    def boom() -> None:
        raise RuntimeError("child failed on purpose")

    done = lab.spawn(boom)
    assert done.status == 125 and "child failed on purpose" in done.output
    flood = lab.spawn(lambda: os.execvp("sh", ["sh", "-c", "yes | head -c 5000000"]), max_output=1000)
    assert flood.status == 0 and len(flood.output) == 1000
    for bad in (0, -1, "5", 10**9):
        with pytest.raises(VlabError, match="timeout"):
            lab.spawn(boom, timeout=bad)  # type: ignore[arg-type]


def test_spawn_kills_the_child_when_the_host_side_step_fails() -> None:
    seen: list[int] = []

    def before(pid: int) -> None:
        seen.append(pid)
        raise OSError("cgroup refused")

    with pytest.raises(OSError, match="cgroup refused"):
        lab.spawn(lambda: os.execvp("sleep", ["sleep", "30"]), before=before)
    assert not Path(f"/proc/{seen[0]}").exists()


def test_spawn_child_holds_no_descriptor_of_another_thread() -> None:
    """A pipe another thread has open at the fork (a subprocess's stdout) must not stay open in a container
    that lives on without exec'ing: that thread's read would hang until the container ends."""
    read_end, write_end = os.pipe()
    seen: list[bytes | None] = []

    def before(pid: int) -> None:  # the child is forked and waits at its gate: is the pipe's writer gone?
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], 2.0)
        seen.append(os.read(read_end, 1) if ready else None)

    try:
        done = lab.spawn(lambda: print(sorted(os.listdir("/proc/self/fd"), key=int)), before=before)
    finally:
        os.close(read_end)
    assert seen == [b""]  # end of file at once: nobody else holds the write end
    assert done.output.split() == ["['0',", "'1',", "'2',", "'3']"]  # 3: listdir's own descriptor


def test_syscall_wrappers_reject_bad_arguments_with_the_field_named() -> None:
    with pytest.raises(VlabError, match="NUL"):
        syscalls.mount(None, "/tmp/a\0b")
    with pytest.raises(VlabError, match="flags"):
        syscalls.unshare(True)
    with pytest.raises(VlabError, match="path string"):
        syscalls.umount(42)  # type: ignore[arg-type]
    with pytest.raises(VlabError, match="hostname"):
        syscalls.sethostname("x" * 65)
    with pytest.raises(VlabError, match="pivot_root"):
        syscalls.pivot_root("/no/such/dir", "/no/such/dir/old")  # refused: the message names the call


def test_build_rootfs_refuses_a_used_directory_or_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(VlabError, match="new or empty"):
        lab.build_rootfs(tmp_path / "used")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(VlabError, match="symlink"):
        lab.build_rootfs(tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


def test_the_oci_layout_is_content_addressed_and_names_its_layers_in_order(rootfs: Path, tmp_path: Path) -> None:
    image = lab.write_oci_layout(tmp_path / "image", [lab.rootfs_layer(rootfs), lab.layer_tar({"etc/motd": b"hi\n",
                                                                                                  "bin/vi": None})])
    index = json.loads((image / "index.json").read_text())
    blobs = image / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == 2
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        blob = (blobs / descriptor["digest"].split(":")[1]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == descriptor["digest"].split(":")[1]
        assert hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id.split(":")[1]
    top = gzip.decompress((blobs / manifest["layers"][1]["digest"][7:]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(top)) as tar:
        assert sorted(tar.getnames()) == ["bin/.wh.vi", "etc/motd"]


def test_params_are_deterministic_and_vary(tmp_path: Path) -> None:
    assert lab.params_for(5) == lab.params_for(5)
    assert len({lab.params_for(seed)["hostname"] for seed in range(20)}) > 5
    assert lab.params_for(practice_seed("08")) != lab.params_for(1)


def test_a_host_without_unshare_skips_the_container_parts_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """Binder forbids namespaces; here unshare(1) is simply not found, which the probe treats the same way."""
    monkeypatch.setenv("PATH", str(tmp_path))
    found = lab.support()
    assert not found.namespaces and "skipped" in found.why


@needs_ns
@pytest.mark.skipif(os.geteuid() != 0, reason="a veth pair's host end needs root")
def test_two_containers_on_a_bridge_ping_each_other_and_leave_no_interface(run_container: Runtime,
                                                                         rootfs: Path) -> None:
    def host_links() -> set[str]:  # only names this runtime makes: other tests may add their own meanwhile
        text = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        return {line.split(":")[1].strip() for line in text.splitlines()
                if line.split(":")[1].strip().split("@")[0] in ("eth0", "br0") or " veth" in line}

    before = host_links()
    with lab.Bridge() as net:
        served: list[Any] = []
        server = threading.Thread(target=lambda: served.append(run_container(rootfs, ["sleep", "60"], {
            "network": net.pid, "ip": "10.88.0.2/24", "timeout": 30})))
        server.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not [link for link in net.links() if link.startswith("veth")]:
                time.sleep(0.05)
            attached = net.links()
            client = run_container(rootfs, ["ping", "-c", "2", "-W", "1", "10.88.0.2"],
                                   {"network": net.pid, "ip": "10.88.0.3/24"})
        finally:
            for victim in lab.leftovers()["processes"]:  # the server's sleep: end it now
                os.kill(int(victim.split()[0]), signal.SIGKILL)
            server.join()
        assert len([link for link in attached if link.startswith("veth")]) == 1, (attached, served)  # the server's
        assert "2 packets received" in client.output, client.output
    assert host_links() <= before, "a veth, eth0 or br0 was left on the host"
    with pytest.raises(ProcessLookupError):
        os.kill(net.pid, 0)
