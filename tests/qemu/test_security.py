"""A VM cannot be turned against its host: option injection, host loopback, runtime-dir squatting (passphrases:
test_secrets.py).

Every test here uses real QEMU processes (and real guests where the guest's view is the point); the
"other user" is the real ``nobody`` account, switched to with ``setuid`` in the child.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.host import procfs
from vlab.paths import runtime_dir
from vlab.qemu import VM, Disk, Nic, VMConfig
from vlab.qemu.process import TOKEN_ENV, sweep_orphans

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU_IDLE = ["qemu-system-x86_64", "-S", "-display", "none", "-nodefaults", "-M", "none"]


# ------------------------------------------------------------------------------------------ injection


def test_a_disk_path_with_options_in_it_is_one_filename_to_qemu(config: VMConfig, tmp_path: Path) -> None:
    """The path from the issue: with options pasted into -blockdev the guest read a host file."""
    host_secret = tmp_path / "host-secret"
    host_secret.write_bytes(b"HOST-SECRET-".ljust(4096, b"\0"))
    hostile = tmp_path / f"x.img,driver=raw,file.filename={host_secret},backing.driver=raw"
    hostile.parent.mkdir(parents=True)  # the '/' in the injected filename make directories of a real path
    hostile.write_bytes(b"DISK-CONTENT".ljust(4096, b"\0"))
    vm_config = config.replace(disks=(Disk(hostile, overlay=False, readonly=True),))
    blockdevs = [vm_config.qemu_argv()[i + 1] for i, w in enumerate(vm_config.qemu_argv()) if w == "-blockdev"]
    assert json.loads(blockdevs[0])["file"]["filename"] == str(hostile)
    with VM(vm_config) as vm:
        seen = vm.console.run("head -c 12 /dev/vda").output
    assert seen == "DISK-CONTENT"


def test_an_overlay_on_a_hostile_base_reads_that_base(config: VMConfig, tmp_path: Path) -> None:
    base = tmp_path / 'b,backing.file.filename=/etc/hostname,"},{"x":"'
    base.parent.mkdir(parents=True)
    base.write_bytes(b"BASE-CONTENT".ljust(65536, b"\0"))
    with VM(config.replace(disks=(Disk(base),))) as vm:
        assert vm.console.run("head -c 12 /dev/vda").output == "BASE-CONTENT"
        assert vm.console.run("echo changed > /dev/vda && sync && head -c 7 /dev/vda").output == "changed"
    assert base.read_bytes()[:12] == b"BASE-CONTENT"  # the overlay took the write


# ------------------------------------------------------------------------------------------ loopback


@pytest.fixture
def host_listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on the host's 127.0.0.1 recording what each connection sends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(100))
                except OSError:
                    received.append(b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        stop.set()
        thread.join()
        server.close()


def _poke(vm: VM, port: int) -> None:
    vm.console.run(f"echo from-guest | nc -w 3 10.0.2.2 {port}; echo done", timeout=20)


def test_default_nic_cannot_reach_the_hosts_loopback_and_outbound_can(
        config: VMConfig, host_listener: tuple[int, list[bytes]]) -> None:
    port, received = host_listener
    nat = dict(append="console=ttyS0 quiet panic=-1 no_timer_check vlab.gw=10.0.2.2")
    with VM(config.replace(nics=(Nic(ip="10.0.2.15/24"),), **nat)) as vm:
        _poke(vm, port)
        time.sleep(0.5)
        assert received == []
        assert vm.console.run("ping -c 1 -W 5 10.0.2.2").ok  # the virtual network itself still works
    with VM(config.replace(nics=(Nic(ip="10.0.2.15/24", outbound=True),), **nat)) as vm:
        _poke(vm, port)  # the control: the same guest command does reach the host when allowed
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert received == [b"from-guest\n"]


def test_deny_outbound_refuses_outbound_nics_and_raw_network_options(
        config: VMConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_DENY_OUTBOUND", "1")
    with pytest.raises(VlabError) as caught:
        Nic(outbound=True)
    assert caught.value.field == "nics.outbound" and "VLAB_DENY_OUTBOUND" in caught.value.problem
    for extra in (("-netdev", "user,id=n9"), ("-nic", "user"), ("-chardev", "socket,id=c,host=127.0.0.1,port=1"),
                  ("-device", "virtio-serial"), ("-qmp", "tcp:127.0.0.1:4444,server=on")):
        with pytest.raises(VlabError) as caught:
            config.replace(extra_args=extra)
        assert caught.value.field == "extra_args"
    assert Nic().outbound is False  # the default needs no permission


# ------------------------------------------------------------------------------------------ runtime dir


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    return pwd.getpwnam("nobody")


@pytest.mark.parametrize("kind", ["symlink", "mode 0777", "other owner", "a file"])
def test_a_runtime_dir_someone_else_could_control_is_refused(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: VMConfig) -> None:
    target = tmp_path / "rt"
    if kind == "symlink":
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        target.symlink_to(real)
    elif kind == "mode 0777":
        target.mkdir()
        target.chmod(0o777)
    elif kind == "other owner":
        target.mkdir(mode=0o700)
        os.chown(target, _nobody().pw_uid, -1)
    else:
        target.write_text("")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.setenv("VLAB_RUNTIME", str(target))
    with pytest.raises(VlabError) as caught:
        VM(config).start()
    assert caught.value.field == "runtime_dir" and caught.value.value == str(target)
    assert "VLAB_RUNTIME" in (caught.value.fix or "")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written into it
    assert not [p for p in procfs.descendants(os.getpid()) if "qemu" in " ".join(procfs.cmdline(p) or [])]


def _plant_owner_file(qemu_pid: int, token: str) -> Path:
    dead = subprocess.Popen(["true"])
    dead.wait()
    workdir = runtime_dir() / f"vm{dead.pid}-1-planted"
    workdir.mkdir(mode=0o700)
    (workdir / "owner.json").write_text(json.dumps({
        "owner": dead.pid, "owner_start": 1, "qemu": qemu_pid, "qemu_start": procfs.start_time(qemu_pid),
        "token": token,
    }))
    return workdir


def _as_nobody() -> None:  # pragma: no cover - runs in the forked child
    user = pwd.getpwnam("nobody")
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


@pytest.mark.parametrize("victim", ["our sleep", "our qemu without token", "our qemu, other token",
                                    "nobody's qemu with the token"])
def test_sweep_never_kills_what_vlab_did_not_start(victim: str, tmp_path: Path) -> None:
    token = "t" * 32
    env = {**os.environ, TOKEN_ENV: token}
    if victim == "our sleep":
        process = subprocess.Popen(["sleep", "30"], env=env)
    elif victim == "our qemu without token":
        process = subprocess.Popen(QEMU_IDLE)
    elif victim == "our qemu, other token":
        process = subprocess.Popen(QEMU_IDLE, env={**os.environ, TOKEN_ENV: "u" * 32})
    else:
        _nobody()
        process = subprocess.Popen(QEMU_IDLE, env=env, preexec_fn=_as_nobody, cwd="/")
    try:
        time.sleep(0.2)
        workdir = _plant_owner_file(process.pid, token)
        assert process.pid not in sweep_orphans()
        assert process.poll() is None
        assert not workdir.exists()  # the stale record itself is cleaned up
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_sweep_kills_a_qemu_whose_owner_died_when_it_is_provably_ours() -> None:
    # PR_SET_PDEATHSIG makes this impossible with vlab's own launches, so the orphan is made by hand: a real
    # QEMU started with the token, recorded with an owner pid that really exited.
    token = "k" * 32
    qemu = subprocess.Popen(QEMU_IDLE, env={**os.environ, TOKEN_ENV: token})
    try:
        time.sleep(0.2)
        workdir = _plant_owner_file(qemu.pid, token)
        assert qemu.pid in sweep_orphans()
        assert qemu.wait(2) == -signal.SIGKILL
        assert not workdir.exists()
    finally:
        qemu.kill()
        qemu.wait()
