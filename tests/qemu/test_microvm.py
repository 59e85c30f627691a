"""``-M microvm`` for cold boots (``machine="auto"``): what it runs, that the guest's devices work, and refusals.

A cold boot of ``machine="auto"`` runs on microvm (virtio-mmio devices, the kernel's PVH entry when the image
has ``vmlinux``); templates, and VMs restored from them, stay on ``pc``; ``from_argv``/``from_conf`` stay ``pc``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu import VM, Disk, Nic, VMConfig, template
from vlab.qemu.argv import parse_argv
from vlab.qemu.config import host_tsc_khz, pvh_kernel
from vlab.qemu.disks import create_image
from vlab.qemu.network import bridge_supported

needs_tsc = pytest.mark.skipif(host_tsc_khz() is None, reason="this host's TSC rate is unknown: auto means pc")


@needs_tsc
def test_auto_is_microvm_for_cold_boots_and_pc_where_it_must_be(guest_images: tuple[Path, Path]) -> None:
    config = VMConfig(accel="tcg")
    assert config.machine == "auto" and config.boot_machine() == "microvm"
    argv = config.qemu_argv()
    assert argv[argv.index("-M") + 1].startswith("microvm,")
    assert '"driver":"virtio-balloon-device"' in " ".join(argv)
    assert f"tsc_early_khz={host_tsc_khz()} tsc=reliable" in argv[argv.index("-append") + 1]
    # extra_args may name PCI devices: pc
    assert config.replace(extra_args=("-device", "virtio-rng-pci")).boot_machine() == "pc"
    # templates boot pc (their VMs hot-plug over PCI), with the same key as before machine="auto"
    assert template.base_config(config).machine == "pc"
    assert template.key_fields(config, "tcg") == template.key_fields(config.replace(machine="pc"), "tcg")
    assert template.cold_reason(config.replace(machine="microvm")) is not None
    # the textbook's vm.conf and a student's argv are the classic PC (lab 01)
    assert VMConfig.from_conf(f'kernel = "{guest_images[0]}"\nmem = "256M"').machine == "pc"
    parsed = parse_argv(["qemu-system-x86_64", "-kernel", str(guest_images[0]), "-initrd", str(guest_images[1]),
                         "-append", "console=ttyS0"])
    assert parsed.config.machine == "pc"


@needs_tsc
def test_microvm_cold_boot_gets_a_shell_and_its_devices_work(config: VMConfig, tmp_path: Path) -> None:
    plain = create_image(tmp_path / "plain.qcow2", "16M")
    secret = create_image(tmp_path / "secret.qcow2", "16M", secret="pw", iter_time_ms=10)
    config = config.replace(disks=(Disk(plain), Disk(secret, secret="pw")),
                            nics=(Nic(ip="10.0.2.15/24"),), append="console=ttyS0 quiet vlab.gw=10.0.2.2")
    with VM(config).start(cold=True) as vm:
        assert vm.start_mode == "cold" and vm.machine == "microvm"
        kernel = vm.argv[vm.argv.index("-kernel") + 1]
        assert kernel == str(pvh_kernel(Path(str(config.kernel))) or config.kernel)
        run = vm.console.run
        assert run("ls /sys/bus/pci/devices | wc -l").output.strip() == "0"  # no PCI at all
        assert "tsc=reliable" in run("cat /proc/cmdline").output
        assert run("ls /sys/block").output.split() == ["vda", "vdb"]
        assert run("echo hello > /dev/vda && head -c 5 /dev/vda").output == "hello"
        assert run("ping -c 1 -W 5 10.0.2.2").ok
        assert vm.balloon("128M") == 128
        assert vm.memory().balloon_actual == 128 * 1024 * 1024
        host_before, guest_before = time.time(), vm.guest_clock()
        assert abs(guest_before - host_before) < 5
        vm.pause()
        time.sleep(2.2)
        vm.resume()
        assert vm.guest_clock() - guest_before < 2  # the RTC follows the VM's clock: it stood still
        vm.snapshot_save("s1")
        run("echo changed > /tmp/mark")
        vm.snapshot_load("s1")
        assert not run("test -e /tmp/mark").ok
        assert vm.stop() == "powerdown"  # ACPI (GED) power button on microvm


@needs_tsc
def test_bridge_nics_on_microvm_reach_each_other(guest_images: tuple[Path, Path]) -> None:
    supported, why = bridge_supported()
    if not supported:
        pytest.skip(f"{why}; run the tests as root to cover bridge NICs")

    def on(name: str, ip: str) -> VMConfig:
        return VMConfig(name=name, accel="tcg", nics=(Nic("bridge", "mvm", ip),), cold_boot=True)

    with VM(on("ma", "10.78.0.1/24")) as a, VM(on("mb", "10.78.0.2/24")) as b:
        assert a.machine == b.machine == "microvm"
        assert a.console.run("ping -c 1 -W 3 10.78.0.2").ok


@needs_tsc
def test_migration_between_two_microvm_vms(config: VMConfig) -> None:
    source = VM(config).start(cold=True)
    destination = VM(config)
    try:
        assert source.machine == "microvm"
        source.console.run("echo still-me > /tmp/mark")
        result = source.migrate_to(destination)
        assert result.status == "completed"
        assert destination.machine == "microvm"
        assert destination.argv[destination.argv.index("-M") + 1].startswith("microvm,")
        assert destination.console.run("cat /tmp/mark").output == "still-me\n"
    finally:
        destination.kill()
        source.kill()


def test_restored_source_migrates_into_a_pc_destination(vm: VM, config: VMConfig) -> None:
    """A VM restored from a template runs pc; its destination must too, though its own cold boot would not."""
    if vm.start_mode != "restored":
        pytest.skip(f"no template restore here ({vm.start_note})")
    assert vm.machine == "pc"
    destination = VM(config)
    try:
        assert vm.migrate_to(destination).status == "completed"
        assert destination.machine == "pc"
        assert destination.console.run("echo ok").output == "ok\n"
    finally:
        destination.kill()


def test_impossible_microvm_combinations_are_refused(guest_images: tuple[Path, Path]) -> None:
    if host_tsc_khz() is not None:
        with pytest.raises(VlabError) as caught:
            VMConfig(machine="microvm", extra_args=("-device", "virtio-rng-pci"))
        assert caught.value.field == "extra_args" and "PCI" in caught.value.problem
        assert 'machine="pc"' in (caught.value.fix or "")
    with pytest.raises(VlabError) as caught:
        VMConfig(machine="isapc")
    assert caught.value.field == "machine"
    with pytest.raises(VlabError) as caught:
        parse_argv(["qemu-system-x86_64", "-M", "microvm", "-kernel", str(guest_images[0]), "-initrd",
                    str(guest_images[1]), "-append", "console=ttyS0"])
    assert caught.value.field == "argv" and caught.value.value == "microvm"
