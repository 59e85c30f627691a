"""vlab.VM.from_argv and vm.raw_qmp(), attacked: wrong types, injected words, argvs that never boot, a killed
QEMU, a dead owner, and a student's QMP code that fails half-way. Nothing may hang and nothing may be left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlab.errors import VlabError
from vlab.host import procfs
from vlab.labs import create_vm as lab
from vlab.qemu import VM, Nic, VMConfig, VMState
from vlab.qemu.argv import ALLOWED_OPTIONS, parse_argv
from vlab.qemu.config import LaunchIO


def good(kernel: Path, initrd: Path, *extra: str, append: str = "console=ttyS0 quiet no_timer_check") -> list[str]:
    return ["qemu-system-x86_64", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-m", "128", "-smp", "1", *extra]


@pytest.fixture
def argv(guest_images: tuple[Path, Path]) -> list[str]:
    return good(*guest_images)


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not procfs.alive(pid):
            return True
        time.sleep(0.05)
    return False


def handshake(send: Any) -> None:
    send({"execute": "qmp_capabilities"})


def pause_then_raise(error: Exception) -> Any:
    def pause(send: Any) -> str:
        send({"execute": "stop"})
        raise error

    return pause


# ---------------------------------------------------------------- validation (no QEMU started)


@pytest.mark.parametrize("bad", ["qemu-system-x86_64 -m 256", b"qemu", None, 42, {"-m": "256"}, ("",) * 0,
                                 ["qemu-system-x86_64", 256], ["qemu-system-x86_64", None],
                                 ["qemu-system-x86_64", ["-m", "256"]], ["qemu-system-x86_64"] * 65])
def test_anything_but_a_list_of_strings_is_refused_by_name(bad: Any) -> None:
    with pytest.raises(VlabError) as caught:
        parse_argv(bad)
    assert caught.value.field == "argv"
    assert "argv" in str(caught.value)


@pytest.mark.parametrize("program", ["/bin/sh", "sh", "bash", "qemu-system-x86_64; rm -rf /", "python3",
                                     "qemu-system-aarch64", ""])
def test_only_the_emulator_may_be_argv0(argv: list[str], program: str) -> None:
    with pytest.raises(VlabError, match=r"argv\[0\]|must not be empty|emulator"):
        parse_argv([program, *argv[1:]])


def test_argv0_is_never_run_even_when_it_names_a_path(argv: list[str], tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\ntouch pwned\n")
    fake.chmod(0o755)
    parsed = parse_argv([str(fake), *argv[1:]])
    launched = parsed.launch_argv(LaunchIO(qmp_fd=3, console_fd=4), "tcg")
    assert launched[0] == "qemu-system-x86_64" and str(fake) not in launched


@pytest.mark.parametrize(("words", "why"), [
    (["-daemonize"], "outlive"),
    (["-S"], "never boot"),
    (["-incoming", "tcp:0:4444"], "forever"),
    (["-serial", "file:/tmp/x"], "ttyS0"),
    (["-monitor", "stdio"], "QMP"),
    (["-qmp", "tcp:127.0.0.1:4444,server=on"], "QMP"),
    (["-chardev", "socket,id=x,host=1.2.3.4,port=80"], "connection"),
    (["-netdev", "user,id=n,hostfwd=tcp::2222-:22"], "network"),
    (["-nic", "user"], "network"),
    (["-drive", "file=/etc/shadow,format=raw"], "disk"),
    (["-hda", "/etc/shadow"], "disk"),
    (["-device", "virtio-rng-pci"], "not allowed"),
    (["-object", "memory-backend-file,id=m,mem-path=/etc"], "not allowed"),
    (["-plugin", "/tmp/evil.so"], "not allowed"),
    (["-bios", "/tmp/evil.bin"], "not allowed"),
    (["-readconfig", "/tmp/evil.cfg"], "not allowed"),
    (["-sandbox", "off"], "not allowed"),
    (["-gdb", "tcp::1234"], "not allowed"),
    (["-loadvm", "x"], "disk"),
    (["--daemonize"], "not allowed"),
])
def test_options_that_break_isolation_or_hang_are_refused_with_the_reason(argv: list[str], words: list[str],
                                                                          why: str) -> None:
    with pytest.raises(VlabError) as caught:
        parse_argv([*argv, *words])
    message = str(caught.value)
    assert words[0] in message and why in message


SMUGGLED = [("-name", "vm1,process=evil"), ("-name", "x" * 40), ("-M", "pc,memory-backend=x"), ("-machine", "microvm"),
            ("-cpu", "host,+vmx"), ("-smp", "2,maxcpus=64"), ("-smp", "0"), ("-smp", "4096"),
            ("-accel", "kvm,thread=multi"), ("-accel", "hvf"), ("-display", "gtk")]


@pytest.mark.parametrize(("option", "value"), SMUGGLED)
def test_values_that_smuggle_options_are_refused(guest_images: tuple[Path, Path], option: str, value: str) -> None:
    shown = "-M" if option == "-machine" else option
    with pytest.raises(VlabError, match=re.escape(shown)):
        parse_argv(good(*guest_images, option, value))


@pytest.mark.parametrize(("append", "why"), [
    ("quiet", "console=ttyS0"),
    ("console=tty0", "console=ttyS0"),
    ('console=ttyS0 init="/bin/sh', "quote"),
    ("console=ttyS0\ninit=/bin/sh", "control character"),
    ("console=ttyS0 \x00", "control character"),
    ("console=ttyS0 " + "a" * 3000, "long"),
])
def test_a_kernel_command_line_that_cannot_work_is_refused(guest_images: tuple[Path, Path], append: str,
                                                           why: str) -> None:
    with pytest.raises(VlabError, match=why):
        parse_argv(good(*guest_images, append=append))


def test_the_files_and_sizes_go_through_vmconfigs_checks(guest_images: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, initrd = guest_images
    link = tmp_path / "vmlinuz"
    link.symlink_to(kernel)
    for words, why in ((good(link, initrd), "symlink"), (good(tmp_path, initrd), "regular file"),
                       (good(tmp_path / "nope", initrd), "does not exist"),
                       ([*good(kernel, initrd)[:-4], "-m", "1"], "too small"),
                       ([*good(kernel, initrd)[:-4], "-m", "1T"], "more memory"),
                       ([*good(kernel, initrd)[:-4], "-m", "lots"], "not a size")):
        with pytest.raises(VlabError, match=why):
            parse_argv(words)


def test_missing_repeated_and_dangling_options_are_named(guest_images: tuple[Path, Path]) -> None:
    kernel, initrd = guest_images
    base = good(kernel, initrd)
    for flag in ("-kernel", "-initrd", "-append"):
        index = base.index(flag)
        with pytest.raises(VlabError, match=f"{flag} is missing"):
            parse_argv(base[:index] + base[index + 2:])
    with pytest.raises(VlabError, match="given twice"):
        parse_argv([*base, "-m", "256"])
    with pytest.raises(VlabError, match="given twice"):
        parse_argv([*base, "-accel", "tcg", "-enable-kvm"])
    with pytest.raises(VlabError, match="needs a value"):
        parse_argv([*base, "-cpu"])
    with pytest.raises(VlabError, match="two items"):
        parse_argv([*base[:-4], "-m 128"])
    with pytest.raises(VlabError, match="two items"):
        parse_argv([*base, "stray"])


def test_the_textbook_argv_runs_with_vlabs_plumbing_added(guest_images: tuple[Path, Path]) -> None:
    kernel, initrd = guest_images
    textbook = ["kvm", "-kernel", str(kernel), "-initrd", str(initrd), "-m", "0.5G", "-nographic",
                "-append", "root=/dev/sda1 console=ttyS0,115200", "-name", "vm1,debug-threads=on", "-accel", "tcg"]
    parsed = parse_argv(textbook, nics=(Nic("user", ip="10.0.2.15/24"),))
    assert (parsed.config.name, parsed.config.mem, parsed.config.vcpus) == ("vm1", 512, 1)
    launched = parsed.launch_argv(LaunchIO(qmp_fd=3, console_fd=4, qmp_sync_fd=5,
                                           raw_qmp_path=Path("/run/x,y/qmp-raw.sock")), "tcg")
    assert launched[:5] == ["qemu-system-x86_64", "-name", "vm1,debug-threads=on", "-accel", "tcg"]
    append = launched[launched.index("-append") + 1]
    assert append.split()[:2] == ["root=/dev/sda1", "console=ttyS0,115200"]
    assert {"vlab.hostname=vm1", "vlab.ip0=10.0.2.15/24", "panic=-1"} <= set(append.split())
    assert launched[launched.index("-m") + 1] == "512" and "-nographic" not in launched
    assert launched.count("-accel") == 1 and launched.count("-name") == 1
    assert "socket,id=qmp-raw,path=/run/x,,y/qmp-raw.sock,server=on,wait=off" in launched  # the comma escaped
    assert launched.index("-kernel") < launched.index("-append") < launched.index("-nodefaults")
    assert all(option in ALLOWED_OPTIONS or not option.startswith("-") for option in textbook[1:])
    with_panic = parse_argv(good(kernel, initrd, append="console=ttyS0 panic=5"))
    line = with_panic.launch_argv(LaunchIO(qmp_fd=3, console_fd=4), "tcg")
    assert "panic=-1" not in line[line.index("-append") + 1]


def test_kvm_asked_for_where_it_does_not_work_fails_before_qemu_starts(argv: list[str]) -> None:
    from vlab.host import detect_accelerator

    if detect_accelerator().usable_kvm:
        pytest.skip("this host has working KVM")
    vm = VM.from_argv([*argv, "-enable-kvm"])
    with pytest.raises(VlabError, match="KVM is not usable"):
        vm.start(timeout=10)
    assert vm.pid is None


def test_raw_qmp_needs_a_vm_from_an_argv(argv: list[str]) -> None:
    vm = VM.from_argv(argv)
    with pytest.raises(VlabError):
        vm.raw_qmp()  # not started: a StateError, which is a VlabError
    with pytest.raises(VlabError, match="timeout"):
        vm.raw_qmp(timeout=-1)


def test_fake_qmp_keeps_the_negotiation_rule_and_scenarios_report_each_step() -> None:
    fake = lab.FakeQMP()
    assert fake.send({"execute": "stop"})["error"]["class"] == "CommandNotFound"
    assert fake.state == "running"

    def resume(send: Any) -> Any:
        return send({"execute": "cont"})["error"]["desc"]

    report = lab.qmp_scenario(handshake, pause_then_raise(RuntimeError("half-way")), resume, refuse_cont=True)
    assert report["pause"] == {"raised": "RuntimeError", "message": "half-way", "state": "paused"}
    assert report["resume"]["returned"] == "Resetting the Virtual Machine is required"
    assert report["sent"] == ["qmp_capabilities", "stop", "cont"]

    def stub(send: Any) -> None:
        raise NotImplementedError("q3")

    with pytest.raises(NotImplementedError):  # the grader must see an unanswered stub as such
        lab.qmp_scenario(stub, stub, stub)


# ---------------------------------------------------------------- real QEMU


@pytest.fixture(scope="module")
def booted(guest_images: tuple[Path, Path]) -> Iterator[VM]:
    vm = VM.from_argv(good(*guest_images, "-accel", "tcg"), name="argvvm")
    vm.start(timeout=60)
    try:
        yield vm
    finally:
        vm.kill()


@pytest.mark.qemu
@pytest.mark.slow
def test_the_given_argv_boots_and_the_guest_sees_it(booted: VM) -> None:
    assert booted.state is VMState.RUNNING and booted.start_mode == "cold"
    cmdline = booted.console.run("cat /proc/cmdline").output.split()
    assert {"console=ttyS0", "quiet", "no_timer_check", "vlab.hostname=argvvm", "panic=-1"} <= set(cmdline)
    assert booted.memory().configured == 128 << 20 and booted.memory().balloon_actual is None
    assert booted.argv[booted.argv.index("-kernel") + 1] == str(booted.config.kernel)


@pytest.mark.qemu
@pytest.mark.slow
def test_raw_qmp_frames_json_and_the_caller_speaks_the_protocol(booted: VM) -> None:
    with booted.raw_qmp() as qmp:
        assert qmp.greeting["QMP"]["version"]["qemu"]["major"] >= 7
        assert qmp.send({"execute": "query-status"})["error"]["class"] == "CommandNotFound"
        assert qmp.send({"execute": "qmp_capabilities"}) == {"return": {}}
        for bad in ("stop", b"{}", ["execute", "stop"], None, {"execute": float("nan")}, {"x": object()},
                    {"execute": "x" * 70_000}):
            with pytest.raises(VlabError, match=r"JSON|json|short"):
                qmp.send(bad)  # type: ignore[arg-type]
        assert qmp.send({"execute": "no-such-command"})["error"]["class"] == "CommandNotFound"
        cursor = booted.event_cursor()
        assert qmp.send({"execute": "stop"}) == {"return": {}}
        try:
            assert booted.status() == "paused"
            booted.wait_event("STOP", timeout=3, since=cursor)  # vlab's own monitor sees the student's stop …
            assert booted.state is VMState.PAUSED  # … and the VM's state follows
        finally:
            assert qmp.send({"execute": "cont"}) == {"return": {}}
        assert booted.status() == "running"
        assert [e["event"] for e in qmp.events] == ["STOP", "RESUME"]  # skipped, kept aside
        assert qmp.sent[0] == {"execute": "query-status"}
    with pytest.raises(VlabError, match="closed"):
        qmp.send({"execute": "query-status"})
    first = booted.raw_qmp()
    first.send({"execute": "qmp_capabilities"})
    second = booted.raw_qmp()  # closes the first: QEMU serves one client per monitor
    assert first.closed
    assert second.send({"execute": "query-status"})["error"]["class"] == "CommandNotFound"  # a fresh session
    second.close()
    assert booted.console.run("echo alive").output == "alive\n"


@pytest.mark.qemu
@pytest.mark.slow
def test_student_qmp_code_that_fails_half_way_leaves_the_vm_running(booted: VM) -> None:
    pause_then_crash = pause_then_raise(KeyError("status"))

    def never_resumes(send: Any) -> str:
        return "running"

    cursor = booted.event_cursor()
    seen = lab.observe_qmp_pause(booted, handshake, pause_then_crash, never_resumes, 0.3)
    assert seen is not None
    assert seen["pause"]["raised"] == "KeyError" and seen["status_after_pause"] == "paused"
    assert seen["status_after_resume"] == "paused"  # the student's resume did nothing …
    assert booted.status() == "running"  # … and vlab resumed it
    booted.wait_event("RESUME", timeout=3, since=cursor)
    assert booted.state is VMState.RUNNING
    assert "KeyError" in lab.describe_qmp_pause(seen)

    def no_handshake(send: Any) -> None:
        return None

    def pause(send: Any) -> str:
        reply = send({"execute": "stop"})
        if "error" in reply:
            raise RuntimeError(reply["error"]["desc"])
        return "paused"

    seen = lab.observe_qmp_pause(booted, no_handshake, pause, never_resumes, 0.1)
    assert seen is not None and "capabilities" in seen["pause"]["message"]
    assert seen["status_after_pause"] == "running" and booted.status() == "running"

    def stub(send: Any) -> None:
        raise NotImplementedError("q3")

    assert lab.observe_qmp_pause(booted, stub, stub, stub, 0.1) is None
    assert booted.console.run("echo still").output == "still\n"


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("swap", ["initrd-is-the-kernel", "kernel-is-the-initrd"])
def test_an_argv_that_never_boots_fails_fast_with_the_reason_and_leaves_nothing(
        guest_images: tuple[Path, Path], swap: str) -> None:
    kernel, initrd = guest_images
    argv = good(kernel, kernel) if swap == "initrd-is-the-kernel" else good(initrd, initrd)
    vm = VM.from_argv([*argv, "-accel", "tcg"], name="neverboots")
    started = time.monotonic()
    with pytest.raises(VlabError) as caught:
        vm.start(timeout=45, retries=0)
    assert time.monotonic() - started < 40  # panic=-1 and -no-reboot: QEMU exits, nobody waits for a timeout
    assert vm.state is VMState.FAILED and vm.pid is not None and _gone(vm.pid, 2)
    assert "QEMU" in str(caught.value) or "panic" in str(caught.value)


@pytest.mark.qemu
@pytest.mark.slow
def test_a_killed_qemu_gives_a_clear_error_not_a_hang(guest_images: tuple[Path, Path]) -> None:
    vm = VM.from_argv(good(*guest_images, "-accel", "tcg"), name="killed")
    vm.start(timeout=60)
    try:
        qmp = vm.raw_qmp(timeout=3)
        qmp.send({"execute": "qmp_capabilities"})
        assert vm.pid is not None
        os.kill(vm.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(VlabError) as caught:
            qmp.send({"execute": "query-status"})
        assert time.monotonic() - started < 3.5
        assert "lost QEMU" in str(caught.value) and "SIGKILL" in (caught.value.detail or "")
        assert vm.state in (VMState.FAILED, VMState.STOPPED)
        with pytest.raises(VlabError):
            vm.raw_qmp()
    finally:
        vm.kill()


@pytest.mark.qemu
@pytest.mark.slow
def test_qemu_dies_with_its_owner(guest_images: tuple[Path, Path], tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        import vlab
        argv = {good(*guest_images, "-accel", "tcg")!r}
        vm = vlab.VM.from_argv(argv, name="orphan")
        vm.start(timeout=60)
        print(vm.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no finally: only vlab's process handling is left
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout.split()[0])
    assert _gone(pid), f"QEMU {pid} outlived its owner"


@pytest.mark.qemu
@pytest.mark.slow
def test_boot_pair_falls_back_to_vlabs_argv_and_says_why(guest_images: tuple[Path, Path]) -> None:
    vm1_config = VMConfig(name="bp1", mem=128, accel="tcg")
    vm2_config = VMConfig(name="bp2", mem=128, accel="tcg")
    conf = lab.vm1_conf(vm1_config)

    def bad_argv(text: str) -> list[str]:
        return ["qemu-system-x86_64", "-kernel", "x", "-daemonize"]

    boot = lab.boot_pair(bad_argv, conf, vm1_config, vm2_config)
    try:
        assert not boot.from_your_argv and "-daemonize" in boot.note and "vlab's argv" in str(boot)
        assert boot.vm1.state is VMState.RUNNING and boot.vm2.state is VMState.RUNNING
        with boot.vm1.raw_qmp() as qmp:  # the fallback is a VM from an argv too: the QMP question still works
            assert "QMP" in qmp.greeting
    finally:
        boot.vm1.kill()
        boot.vm2.kill()
