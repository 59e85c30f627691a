"""Lab 01's logic: argv comparison, the textbook vm.conf, parsing guest output, and real VMs booted together."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.labs import create_vm as lab
from vlab.qemu import VM, VMConfig, VMState, default_initrd, default_kernel


@pytest.fixture(scope="module")
def images() -> tuple[Path, Path]:
    try:
        return default_kernel(), default_initrd()
    except VlabError as exc:
        pytest.skip(f"guest images not built ({exc.value}): run `vlab images build`")


# ---------------------------------------------------------------- argv


def test_vlabs_own_argv_agrees_with_itself_on_every_graded_flag(images: tuple[Path, Path]) -> None:
    conf = lab.classic_conf(*images, mem="1G", vcpus=2)
    argv = VMConfig.from_conf(conf).qemu_argv()
    flags = lab.essential_flags(argv)
    assert flags["-m"] == "1024" and flags["-smp"] == "2"
    assert {"console=ttyS0", "root=/dev/sda1"} <= flags["-append"]
    assert not any(word.startswith("vlab.") for word in flags["-append"])
    assert lab.compare_argv(argv, argv) == []


def test_textbook_style_argv_passes_when_it_carries_the_same_values(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    conf = lab.classic_conf(kernel, initrd, mem="512M", vcpus=1)
    student = shlex.split(f"kvm -kernel {kernel} -initrd {initrd} -m 512 -smp 1 -nographic "
                          f"-append 'root=/dev/sda1 console=ttyS0'")
    assert lab.compare_argv(student, VMConfig.from_conf(conf).qemu_argv()) == []


def test_compare_argv_names_each_wrong_flag(images: tuple[Path, Path]) -> None:
    kernel, initrd = images
    reference = VMConfig.from_conf(lab.classic_conf(kernel, initrd, mem="1G", vcpus=2)).qemu_argv()
    student = ["qemu-system-x86_64", "-kernel", str(kernel), "-initrd", str(initrd), "-m", "1",
               "-append", "console=ttyS0"]
    problems = lab.compare_argv(student, reference)
    assert any(p.startswith("-m: expected '1024', got '1'") for p in problems)
    assert any(p.startswith("-smp: expected '2', got nothing") for p in problems)
    assert any(p.startswith("-append: missing ['root=/dev/sda1']") for p in problems)
    assert len(problems) == 3


def test_essential_flags_rejects_a_string_and_a_dangling_flag() -> None:
    with pytest.raises(VlabError, match="list of strings"):
        lab.essential_flags("qemu-system-x86_64 -m 512")  # a str is a Sequence[str]: only the runtime refuses it
    with pytest.raises(VlabError, match="needs a value"):
        lab.essential_flags(["qemu-system-x86_64", "-m"])


def test_explain_argv_explains_every_flag_vlab_uses(images: tuple[Path, Path]) -> None:
    text = lab.explain_argv(VMConfig(nics=()).qemu_argv())
    assert "not explained" not in text
    assert "NOT a bootloader" in text


def test_classic_conf_round_trips_through_vmconfig(images: tuple[Path, Path]) -> None:
    config = VMConfig.from_conf(lab.classic_conf(*images, mem="384M", vcpus=1, root=None))
    assert (config.mem, config.vcpus, config.root) == (384, 1, None)


# ---------------------------------------------------------------- host, parsing, helpers


def test_host_resources_reports_this_host() -> None:
    host = lab.host_resources()
    assert host.cpus == len(os.sched_getaffinity(0))
    assert 0 < host.mem_available_mib <= host.mem_total_mib
    assert host.accel in ("kvm", "tcg")
    assert host.accel_kind in host.table()


def test_free_total_mib_reads_the_mem_line() -> None:
    out = ("              total        used        free      shared  buff/cache   available\n"
           "Mem:            218          17         189           3          12         192\n"
           "Swap:             0           0           0\n")
    assert lab.free_total_mib(out) == 218
    with pytest.raises(VlabError, match="Mem:"):
        lab.free_total_mib("uptime: 0 min")


def test_lab_configs_use_a_bridge_exactly_when_the_host_allows_it(images: tuple[Path, Path]) -> None:
    vm1, vm2, note = lab.lab_configs(256, 640)
    assert vm1.nics[0].mode == "user" and (vm1.mem, vm2.mem) == (256, 640)
    bridged = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
    assert (len(vm1.nics) == 2 and len(vm2.nics) == 1) == bridged
    assert ("private bridge br-lab01" in note) == bridged


# ---------------------------------------------------------------- real VMs


@pytest.fixture(scope="module")
def pair(images: tuple[Path, Path]) -> Iterator[tuple[VM, VM]]:
    vm1_config, vm2_config, _ = lab.lab_configs(256, 640, bridge="t01")
    vm1, vm2 = VM(vm1_config.replace(accel="tcg")), VM(vm2_config.replace(accel="tcg"))
    lab.boot_together(vm1, vm2)
    try:
        yield vm1, vm2
    finally:
        vm1.kill()
        vm2.kill()


@pytest.mark.qemu
@pytest.mark.slow
def test_two_vms_boot_together_and_reach_nat_and_each_other(pair: tuple[VM, VM]) -> None:
    vm1, vm2 = pair
    assert vm1.state is VMState.RUNNING and vm2.state is VMState.RUNNING
    assert lab.ping(vm1, "10.0.2.2", count=1).received == 1
    if vm2.config.nics:
        result = lab.ping(vm1, "10.0.1.2", count=2)
        assert result.received == 2 and len(result.rtt_ms) == 2


@pytest.mark.qemu
@pytest.mark.slow
def test_guest_reports_less_memory_than_configured(pair: tuple[VM, VM]) -> None:
    vm1, vm2 = pair
    small = lab.free_total_mib(vm1.console.run("free -m").output)
    big = lab.free_total_mib(vm2.console.run("free -m").output)
    assert small < 256 and big < 640
    assert (640 - big) > (256 - small)  # part of the gap grows with memory (struct page per page)


@pytest.mark.qemu
@pytest.mark.slow
def test_guest_clock_stands_still_while_paused(pair: tuple[VM, VM]) -> None:
    seen = lab.observe_pause(pair[0], 0.6)
    assert seen.status_while_paused == "paused"
    assert seen.paused_for >= 0.6
    assert seen.guest_elapsed < seen.host_elapsed - 0.4
    assert "guest uptime" in str(seen)


@pytest.mark.qemu
@pytest.mark.slow
def test_vcpu_table_names_live_host_threads(pair: tuple[VM, VM]) -> None:
    vm1 = pair[0]
    table = lab.vcpu_table(vm1)
    for cpu in vm1.vcpus():
        assert str(cpu.thread_id) in table
        assert Path(f"/proc/{vm1.pid}/task/{cpu.thread_id}").exists()


@pytest.mark.qemu
@pytest.mark.slow
def test_a_vm_is_what_the_vmpanel_drives_and_its_console_tail_has_no_framing(pair: tuple[VM, VM]) -> None:
    from vlab.dashboards import ControllableVM

    vm = pair[1]
    assert isinstance(vm, ControllableVM)
    assert set(vm.vcpu_times()) == {0}
    assert vm.rss_bytes() > 32 << 20
    vm.console.run("echo tail-check")
    assert "tail-check" in vm.console_tail(5) and "=VLAB" not in vm.console_tail(50)
    panel = lab.vm_panel(vm)
    assert panel is not None
    try:
        panel.refresh(force=True)
        assert "vm2: running" in panel.text()
    finally:
        panel.close()


@pytest.mark.qemu
@pytest.mark.slow
def test_boot_together_leaves_nothing_behind_when_one_vm_fails(images: tuple[Path, Path], tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "vmlinuz"
    not_a_kernel.write_bytes(b"\0" * 4096)
    good, bad = VM(VMConfig(name="good", accel="tcg")), VM(VMConfig(name="bad", accel="tcg", kernel=not_a_kernel))
    with pytest.raises(VlabError):
        lab.boot_together(good, bad, timeout=20)
    assert good.state is VMState.STOPPED and bad.state is VMState.FAILED
    assert good.pid is not None and not Path(f"/proc/{good.pid}").exists()  # booted, then killed
