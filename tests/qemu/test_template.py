"""Snapshot templates on the real guest: build, key, cache, restore by default, individualize, and attacks on the
cache (truncated, corrupted, foreign, symlinked templates; concurrent and killed builders; a frozen QEMU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.template_cache import private_template_cache
from vlab.qemu import VM, Disk, Nic, VMConfig, template
from vlab.qemu.disks import create_image
from vlab.qemu.template import Template, TemplateError

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, guest_images: tuple[Path, Path]) -> Iterator[Path]:
    """A private template cache for this module (VLAB_TEMPLATES), removed afterwards."""
    with private_template_cache(tmp_path_factory.mktemp("templates"), remove=False) as root:
        yield root


@pytest.fixture(scope="module")
def built(cache: Path) -> Template:
    """The default guest's template (copy form), and a pristine copy of it beside the cache."""
    found, note = template.ensure(VMConfig(accel="tcg"), "tcg")
    assert note == "built the template (first use)"
    shutil.copytree(found.directory, cache.parent / "pristine", symlinks=True)
    return found


@pytest.fixture
def fresh(built: Template, cache: Path) -> Template:
    """The template as built (an attack test may have damaged the one in the cache)."""
    template.remove(built.directory)
    shutil.copytree(built.directory.parent.parent / "pristine", built.directory, symlinks=True)
    template._failed_builds.clear()
    return built


def _left(cache: Path) -> list[str]:
    """Everything in the cache but finished templates and lock files."""
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".build-"))


# -- the key and the build --------------------------------------------------------------------------


def test_key_names_everything_that_must_match(guest_images: tuple[Path, Path], tmp_path: Path) -> None:
    base = template.key_fields(VMConfig(accel="tcg"), "tcg")
    assert base["qemu"].startswith("QEMU emulator version")
    assert set(base["firmware"]) == {"bios-256k.bin", "linuxboot_dma.bin"}
    assert len(base["kernel_sha256"]) == len(base["initrd_sha256"]) == 64
    for change, field in (({"mem": 288}, "mem"), ({"vcpus": 2}, "vcpus"), ({"machine": "q35"}, "machine"),
                          ({"balloon": False}, "balloon"), ({"cpu": "max"}, "cpu"), ({"append": "console=ttyS0"},
                                                                                    "cmdline")):
        if field == "vcpus" and (os.cpu_count() or 1) < 2:
            continue
        assert template.key_fields(VMConfig(accel="tcg", **change), "tcg")[field] != base[field]
    assert template.key_fields(VMConfig(accel="tcg"), "kvm")["accel"] == "kvm"
    initrd = tmp_path / "initrd"
    initrd.write_bytes(guest_images[1].read_bytes() + b"\0")
    assert template.key_fields(VMConfig(accel="tcg", initrd=initrd), "tcg")["initrd_sha256"] != base["initrd_sha256"]
    # per-VM words are not hardware: every VM shares one template
    per_vm = VMConfig(accel="tcg", name="other", append="console=ttyS0 quiet panic=-1 no_timer_check vlab.gw=10.0.2.2",
                      nics=(Nic(ip="10.0.2.15/24"),))
    assert template.key_fields(per_vm, "tcg") == base


def test_build_publishes_a_complete_template_in_one_step(built: Template, cache: Path) -> None:
    assert built.directory.parent == cache and built.directory.name == built.key
    assert sorted(p.name for p in built.directory.iterdir()) == ["meta.json", "state"]
    meta = json.loads((built.directory / "meta.json").read_text())
    assert meta["files"]["state"]["size"] == built.state_path.stat().st_size
    assert not meta["shared"] and meta["slots"] == {"balloon0": 2}
    assert _left(cache) == []
    assert template.find(VMConfig(accel="tcg"), "tcg") == built


# -- restore by default, cold when asked ---------------------------------------------------------------


def test_default_start_restores_and_cold_boot_is_available(fresh: Template) -> None:
    with VM(VMConfig(accel="tcg", name="warm")) as vm:
        assert (vm.start_mode, vm.start_note) == ("restored", "")
        # a restored guest printed no boot messages: its console says what it is (what a VM panel shows)
        # (a kernel message may follow it at any moment: only the banner's line is certain)
        assert vm.console_tail(3).splitlines()[0] == "vlab: warm restored from a snapshot template, ready"
        assert vm.console.run("hostname; cat /proc/sys/kernel/hostname").output == "warm\nwarm\n"
        assert vm.argv[vm.argv.index("-incoming") + 1] == "defer"
    with VM(VMConfig(accel="tcg", cold_boot=True)) as vm:
        assert (vm.start_mode, vm.start_note) == ("cold", "the config says cold_boot=True")
        assert "-incoming" not in vm.argv
    vm = VM(VMConfig(accel="tcg"))
    with vm.start(cold=True):
        assert (vm.start_mode, vm.start_note) == ("cold", "start(cold=True) was asked for")


def test_start_with_progress_reports_the_restore_steps(fresh: Template, capsys: pytest.CaptureFixture[str]) -> None:
    with VM(VMConfig(name="steps", accel="tcg")).start(progress=True) as vm:
        assert vm.start_mode == "restored"
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["booting steps: [1/2] finding the snapshot template",
                         "booting steps: [2/2] restoring the snapshot template"]


def test_cold_boot_environment_and_extra_args(fresh: Template, monkeypatch: pytest.MonkeyPatch) -> None:
    config = VMConfig(accel="tcg")
    assert template.cold_reason(config.replace(extra_args=("-device", "virtio-rng-pci"))) == \
        "extra_args may change the device set, which a template must match exactly"
    assert template.cold_reason(config.replace(machine="q35", nics=(Nic(),))) is not None
    assert template.cold_reason(config.replace(machine="q35")) is None
    monkeypatch.setenv(template.COLD_BOOT_ENV, "1")
    assert template.cold_reason(config) == "VLAB_COLD_BOOT=1 is set"
    assert template.cold_reason(config, cold=False) is None


def _start_together(*vms: VM) -> None:
    errors: list[BaseException] = []

    def go(vm: VM) -> None:
        try:
            vm.start()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(vm,)) for vm in vms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for vm in vms:
            vm.kill()
        raise errors[0]


def test_two_guests_restored_at_once_are_as_individual_as_cold_booted_ones(fresh: Template, tmp_path: Path) -> None:
    disk = create_image(tmp_path / "data.qcow2", "16M")
    vms = [VM(VMConfig(accel="tcg", name=f"guest{i}", disks=(Disk(disk),),
                       nics=(Nic(ip=f"10.0.2.{15 + i}/24"), Nic(mode="user", ip="192.168.7.2/24")),
                       append="console=ttyS0 quiet panic=-1 no_timer_check vlab.gw=10.0.2.2")) for i in range(2)]
    _start_together(*vms)
    try:
        seen = []
        for i, vm in enumerate(vms):
            assert vm.start_mode == "restored", vm.start_note
            before = time.time()
            out = vm.console.run("hostname; cat /sys/class/net/eth0/address /sys/class/net/eth1/address; "
                                 "ip -4 -o addr show dev eth0; ip route; ls /sys/block; date +%s; "
                                 "head -c 16 /dev/urandom | od -An -tx1").output.splitlines()
            after = time.time()
            assert out[0] == f"guest{i}"
            assert out[1:3] == list(vm._macs)
            assert f"10.0.2.{15 + i}/24" in out[3]
            assert any("default via 10.0.2.2" in line for line in out)
            assert any(line.startswith("vda") for line in out)
            guest_clock = int(out[-2])
            assert before - 1 < guest_clock + 1 and guest_clock < after + 1  # the guest's second, within 1 s
            seen.append(out[-1])
            # the NIC really works: QEMU's user-mode gateway answers
            assert vm.console.run("ping -c 1 -W 2 10.0.2.2").ok
        assert seen[0] != seen[1]
        assert vms[0]._macs != vms[1]._macs
    finally:
        for vm in vms:
            vm.kill()


# -- attacks on the cache -------------------------------------------------------------------------------


def test_truncated_state_is_refused_then_rebuilt(fresh: Template, cache: Path) -> None:
    with open(fresh.state_path, "r+b") as state:
        state.truncate(fresh.state_path.stat().st_size // 2)
    with pytest.raises(TemplateError, match=r"bytes, not the .* it was written with"):
        template.find(VMConfig(accel="tcg"), "tcg")
    with VM(VMConfig(accel="tcg")) as vm:
        assert vm.start_mode == "restored"
        assert "truncated or replaced" in vm.start_note and "rebuilt" in vm.start_note
        assert vm.console.run("echo ok").output == "ok\n"
    assert _left(cache) == []


def test_corrupted_state_of_the_same_size_is_refused(fresh: Template) -> None:
    with open(fresh.state_path, "r+b") as state:
        state.seek(4096)
        state.write(b"\xff" * 64)
    with pytest.raises(TemplateError, match="changed since it was written"):
        template.find(VMConfig(accel="tcg"), "tcg")


def test_state_corrupted_behind_the_checks_makes_qemu_fail_and_start_fall_back(fresh: Template) -> None:
    """The stream is corrupted and meta.json rewritten to match, as a buggy writer might: QEMU's loader is
    the last line of defence, and start() must boot cold, say why, and leave no QEMU behind."""
    data = bytearray(fresh.state_path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = b"\xa5" * 4096
    data[8:64] = b"\x5a" * 56
    fresh.state_path.write_bytes(bytes(data))
    meta = json.loads((fresh.directory / "meta.json").read_text())
    meta["files"]["state"] = template._record(fresh.state_path)
    (fresh.directory / "meta.json").write_text(json.dumps(meta))
    vm = VM(VMConfig(accel="tcg"))
    with vm.start():
        assert vm.start_mode == "cold"
        assert "restoring the template failed" in vm.start_note


def test_template_of_other_hardware_or_qemu_is_refused(fresh: Template) -> None:
    """Only one QEMU is installed here: a meta.json naming another QEMU version (or memory size) stands in
    for a template written by it, which is what a QEMU upgrade leaves in the cache."""
    meta_path = fresh.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    for field, value in (("qemu", "QEMU emulator version 6.2.0"), ("mem", 512)):
        forged = json.loads(json.dumps(meta))
        forged["fields"][field] = value
        meta_path.write_text(json.dumps(forged))
        with pytest.raises(TemplateError, match=f"made for other hardware \\(differs in: {field}\\)"):
            template.find(VMConfig(accel="tcg"), "tcg")
    meta_path.write_text("{not json")
    with pytest.raises(TemplateError, match=r"meta\.json cannot be read"):
        template.find(VMConfig(accel="tcg"), "tcg")


def test_symlinks_in_the_cache_are_never_followed(fresh: Template, cache: Path, tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    shutil.copytree(fresh.directory, decoy)
    template.remove(fresh.directory)
    fresh.directory.symlink_to(decoy)
    with pytest.raises(TemplateError, match="symlink"):
        template.find(VMConfig(accel="tcg"), "tcg")
    # ensure() removes the link itself, never the directory it points to, and builds a real template
    template.remove(fresh.directory)
    assert decoy.is_dir() and not fresh.directory.exists()
    os.symlink(decoy / "state", decoy / "state-link")
    template.remove(fresh.directory)
    shutil.copytree(decoy, fresh.directory, symlinks=True)
    (fresh.directory / "state").unlink()
    (fresh.directory / "state").symlink_to(decoy / "state")
    with pytest.raises(TemplateError, match="state file is a symlink"):
        template.find(VMConfig(accel="tcg"), "tcg")


def test_a_symlinked_or_shared_cache_root_means_cold_boot(fresh: Template, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "link"
    link.symlink_to(fresh.directory.parent)
    monkeypatch.setenv(template.TEMPLATES_ENV, str(link))
    with pytest.raises(TemplateError, match="cache directory is a symlink"):
        template.ensure(VMConfig(accel="tcg"), "tcg")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv(template.TEMPLATES_ENV, str(open_dir))
    with pytest.raises(TemplateError, match="another user could have written it"):
        template.ensure(VMConfig(accel="tcg"), "tcg")
    assert list(open_dir.iterdir()) == []


def test_a_frozen_qemu_during_restore_falls_back_to_cold_boot(fresh: Template,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU is frozen for real (SIGSTOP right after it is spawned for a restore)."""
    from vlab.qemu import vm as vm_module
    from vlab.qemu.process import QemuProcess as real  # what vm_module.QemuProcess is

    frozen: list[int] = []

    def freezing(argv: list[str], *args: object) -> object:
        process = real(argv, *args)  # type: ignore[arg-type]
        if "-incoming" in argv and not frozen:
            os.kill(process.pid, signal.SIGSTOP)
            frozen.append(process.pid)
        return process

    monkeypatch.setattr(vm_module, "QemuProcess", freezing)
    vm = VM(VMConfig(accel="tcg"))
    with vm.start(timeout=20):
        assert vm.start_mode == "cold"
        assert "restoring the template failed" in vm.start_note
    assert frozen and not Path(f"/proc/{frozen[0]}").exists()


# -- concurrent and killed builders (the shared-RAM form: no balloon, and small, so builds are quick) ----

_SMALL = "VMConfig(accel='tcg', mem=96, balloon=False, name='small')"
_BUILD = ("import sys; from vlab.qemu import VMConfig, template; "
          f"found, note = template.ensure({_SMALL}, 'tcg'); print(note or 'found', found.key)")


def test_two_processes_building_the_same_template_build_it_once(cache: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=300)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outs
    notes = sorted(out.rsplit(" ", 1)[0] for out in outs)
    assert notes == ["built the template (first use)", "found"]
    assert outs[0].rsplit(" ", 1)[1] == outs[1].rsplit(" ", 1)[1]
    assert _left(cache) == []


def test_kill_9_mid_build_leaves_no_template_and_the_next_build_cleans_up(cache: Path) -> None:
    config = VMConfig(accel="tcg", mem=112, balloon=False, name="small")
    key = template._key(template.key_fields(config, "tcg"))
    code = _BUILD.replace("mem=96", "mem=112")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [p for p in cache.glob(f".build-{key[:12]}-*") if (p / "ram").exists()]:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (cache / key).exists()
    assert _left(cache)  # the dead builder's directory, until the next build
    time.sleep(0.5)  # its QEMU dies with it (PR_SET_PDEATHSIG)
    found, note = template.ensure(config, "tcg")
    assert note == "built the template (first use)" and found.directory == cache / key
    assert _left(cache) == []


# -- everything else keeps working on restored VMs -----------------------------------------------------


def test_restored_vm_console_qmp_balloon_and_snapshots(fresh: Template) -> None:
    with VM(VMConfig(accel="tcg", name="full")) as vm:
        assert vm.start_mode == "restored"
        assert vm.console.run("false").status == 1
        assert vm.status() == "running" and len(vm.vcpus()) == 1
        assert vm.memory().configured == 256 * 1024 * 1024
        vm.pause()
        vm.resume()
        assert vm.balloon("128M") == 128
        assert int(vm.console.run("awk '/MemTotal/ {print $2}' /proc/meminfo").output) < 140 * 1024
        assert vm.balloon(256) == 256
        vm.console.run("echo before > /tmp/state")
        vm.snapshot_save("one")
        vm.console.run("echo after > /tmp/state")
        vm.snapshot_load("one")
        assert vm.console.run("cat /tmp/state; hostname").output == "before\nfull\n"
        vm.snapshot_delete("one")
        assert vm.stop() == "powerdown"
    # the template is untouched by what its VMs did
    assert template.find(VMConfig(accel="tcg"), "tcg") is not None


def test_restored_vm_with_a_nic_migrates_live(fresh: Template) -> None:
    config = VMConfig(accel="tcg", name="mover", nics=(Nic(ip="10.0.2.15/24"),))
    source, destination = VM(config), VM(config)
    source.start()
    try:
        assert source.start_mode == "restored"
        mac = source.console.run("cat /sys/class/net/eth0/address").output
        source.console.run("echo travelled > /tmp/mark")
        result = source.migrate_to(destination)
        assert result.status == "completed"
        out = destination.console.run("cat /tmp/mark; hostname; cat /sys/class/net/eth0/address").output
        assert out == f"travelled\nmover\n{mac}"
        assert destination.console.run("ping -c 1 -W 2 10.0.2.2").ok
    finally:
        source.kill()
        destination.kill()


def test_shared_ram_form_maps_the_template_and_keeps_it_intact(cache: Path) -> None:
    config = VMConfig(accel="tcg", balloon=False, name="sharer")
    found, _ = template.ensure(config, "tcg")
    assert found.shared and found.ram_path is not None
    ram = found.ram_path.read_bytes()
    with VM(config) as one, VM(config.replace(name="other")) as two:
        assert (one.start_mode, two.start_mode) == ("restored", "restored")
        maps = Path(f"/proc/{one.pid}/maps").read_text()
        assert str(found.ram_path) in maps  # the guest RAM is the template file, mapped privately
        one.console.run("dd if=/dev/urandom of=/dev/shm/noise bs=1M count=16 2>/dev/null")
        one.snapshot_save("s")
        one.snapshot_load("s")
        assert one.console.run("ls -l /dev/shm/noise | wc -l").output == "1\n"
        assert two.console.run("hostname").output == "other\n"
    assert found.ram_path.read_bytes() == ram  # a guest's writes never reach the template
    assert template.find(config, "tcg") is not None


def test_kill_9_of_the_owner_takes_a_restored_qemu_down(fresh: Template) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time, vlab\nvm = vlab.VM(accel='tcg').start()\n"
                               "print(vm.pid, vm.start_mode, flush=True)\ntime.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        pid, mode = holder.stdout.readline().split()
        assert mode == "restored"
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 3
        while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text() \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        holder.kill()
        holder.wait()


def test_a_read_only_cache_means_cold_boot_with_the_reason(fresh: Template, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        blocked = tmp_path / "file"  # root writes anywhere: a cache path under a regular file fails for it too
        blocked.write_text("")
        monkeypatch.setenv(template.TEMPLATES_ENV, str(blocked / "templates"))
    else:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o555)
        monkeypatch.setenv(template.TEMPLATES_ENV, str(locked / "templates"))
    with pytest.raises(TemplateError, match=r"cannot be created|cannot be used"):
        template.ensure(VMConfig(accel="tcg"), "tcg")


def test_images_template_command_reports_the_default_template(fresh: Template, cache: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vlab", "images", "template"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "VLAB_TEMPLATES": str(cache)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("snapshot template (copy): ")
    assert str(cache) in done.stdout


def test_restored_vm_gets_an_encrypted_disk_hot_plugged(fresh: Template, tmp_path: Path) -> None:
    image = create_image(tmp_path / "luks.qcow2", "16M", secret="correct horse")
    with VM(VMConfig(accel="tcg", disks=(Disk(image, secret="correct horse"),))) as vm:
        assert vm.start_mode == "restored", vm.start_note
        assert vm.console.run("echo hello > /dev/vda; sync; head -c 5 /dev/vda").output == "hello"
    assert b"hello" not in image.read_bytes()  # the guest wrote through LUKS
