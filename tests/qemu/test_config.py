"""VMConfig: the textbook vm.conf verbatim, units, comments, quoting, every invalid case, and QEMU's argv.

These are unit tests (no QEMU): kernel and initrd are empty files, since only their existence is checked.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu.config import LaunchIO, Nic, VMConfig, host_tsc_khz, parse_size_mib

TEXTBOOK_CONF = '''kernel = "/boot/vmlinuz"
initrd = "/boot/initrd.img"
appended = "console=ttyS0"
root = "/dev/sda1"
mem = "512M"
vcpus = "1"
'''


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"")
    initrd.write_bytes(b"")
    return kernel, initrd


def test_textbook_vm_conf_is_accepted_verbatim_with_paths_overridden(files: tuple[Path, Path]) -> None:
    kernel, initrd = files
    config = VMConfig.from_conf(TEXTBOOK_CONF, kernel=kernel, initrd=initrd)
    assert (config.kernel, config.initrd, config.mem, config.vcpus, config.root) == (
        kernel, initrd, 512, 1, "/dev/sda1")
    assert config.append == "console=ttyS0"
    assert config.kernel_cmdline().split()[:2] == ["console=ttyS0", "root=/dev/sda1"]


def test_textbook_vm_conf_without_override_names_the_missing_kernel() -> None:
    if os.path.exists("/boot/vmlinuz"):
        pytest.skip("this host has /boot/vmlinuz, so the textbook path is valid here")
    with pytest.raises(VlabError) as caught:
        VMConfig.from_conf(TEXTBOOK_CONF)
    assert caught.value.field == "kernel"
    assert caught.value.value == "/boot/vmlinuz"
    assert caught.value.fix and "default_kernel" in caught.value.fix


def test_conf_file_path_comments_and_quote_styles(files: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, initrd = files
    conf = tmp_path / "vm.conf"
    conf.write_text(
        "# my VM\n\n"
        f"kernel = '{kernel}'   # single quotes\n"
        f"initrd={initrd}\n"
        '  appended = "console=ttyS0 vlab.note=#not-a-comment"  \n'
        "MEM = 1G\n"
        "vcpus = 1\n"
    )
    config = VMConfig.from_conf(conf)
    assert config.mem == 1024
    assert config.vcpus == 1
    assert "vlab.note=#not-a-comment" in config.append


@pytest.mark.parametrize(("text", "mib"), [
    ("512M", 512), ("512", 512), (512, 512), ("1G", 1024), ("1.5G", 1536), ("2GiB", 2048), ("262144K", 256),
    ("512 MB", 512), ("512m", 512),
])
def test_sizes_as_people_write_them(text: str | int, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize(("line", "key", "value", "problem"), [
    ('mem = "-5G"', "mem", "-5G", "positive"),
    ('mem = "0"', "mem", "0", "positive"),
    ('mem = "lots"', "mem", "lots", "not a size"),
    ('mem = "16M"', "mem", "16M", "too small"),
    ('mem = "100000G"', "mem", "100000G", "more memory than the host"),
    ('mem = "0.5M"', "mem", "0.5M", "whole number"),
    ('vcpus = "0"', "vcpus", "0", "at least one"),
    ('vcpus = "-1"', "vcpus", "-1", "at least one"),
    ('vcpus = "two"', "vcpus", "two", "whole number"),
    ('vcpus = "4096"', "vcpus", "4096", "more vCPUs than the host"),
    ('accel = "xen"', "accel", "xen", "auto, tcg or kvm"),
    ('machine = "isapc"', "machine", "isapc", "auto, pc, q35 or microvm"),
    ('root = "/dev/sda 1"', "root", "/dev/sda 1", "without spaces"),
    ('name = "my vm"', "name", "my vm", "letters"),
    ('balloon = "maybe"', "balloon", "maybe", "yes or no"),
])
def test_invalid_values_name_key_value_problem_and_fix(files: tuple[Path, Path], line: str, key: str,
                                                       value: str, problem: str) -> None:
    kernel, initrd = files
    with pytest.raises(VlabError) as caught:
        VMConfig.from_conf(line, kernel=kernel, initrd=initrd)
    error = caught.value
    assert (error.field, error.value) == (key, value)
    assert problem in error.problem
    assert error.fix


@pytest.mark.parametrize(("text", "field", "problem"), [
    ('memory_size = "512M"', "memory_size", "unknown key"),
    ('mem = "512M"\nthis is not a setting', "vm.conf", "malformed line"),
    ('= "512M"', "vm.conf", "malformed line"),
    ('mem = "512M', "mem", "unterminated quote"),
    ("mem =", "mem", "no value"),
    ('mem = "512M"\nmem = "1G"', "mem", "set twice"),
])
def test_malformed_conf_lines_say_which_line_and_how_to_fix(files: tuple[Path, Path], text: str, field: str,
                                                            problem: str) -> None:
    kernel, initrd = files
    with pytest.raises(VlabError) as caught:
        VMConfig.from_conf(text, kernel=kernel, initrd=initrd)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert "line" in caught.value.problem
    assert caught.value.fix


def test_missing_conf_file_and_missing_initrd(files: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, _ = files
    with pytest.raises(VlabError) as caught:
        VMConfig.from_conf(tmp_path / "nope.conf")
    assert caught.value.field == "conf"
    with pytest.raises(VlabError) as caught:
        VMConfig(kernel=kernel, initrd=tmp_path / "missing.img")
    # the value is the path, cut in the middle when long (pytest-xdist's tmp_path is): its file name always shows
    assert caught.value.field == "initrd" and str(caught.value.value).endswith("/missing.img")
    assert str(tmp_path / "missing.img").startswith(str(caught.value.value).split("…")[0])


def test_nic_validation() -> None:
    with pytest.raises(VlabError, match="bridge name"):
        Nic(mode="bridge")
    with pytest.raises(VlabError, match="ADDR/PREFIX"):
        Nic(ip="10.0.0.1")
    with pytest.raises(VlabError, match="'user' or 'bridge'"):
        Nic(mode="tap")  # type: ignore[arg-type]


def test_standalone_argv_is_a_runnable_nographic_command(files: tuple[Path, Path]) -> None:
    kernel, initrd = files
    config = VMConfig(kernel=kernel, initrd=initrd, mem="512M",  # type: ignore[arg-type]  # units accepted at runtime
                      vcpus=1, append="console=ttyS0", root="/dev/sda1", machine="pc")
    argv = config.qemu_argv()
    assert argv[0] == "qemu-system-x86_64"
    pairs = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("-")}
    assert pairs["-kernel"] == str(kernel)
    assert pairs["-initrd"] == str(initrd)
    assert pairs["-m"] == "512"
    assert pairs["-smp"] == "1"
    assert pairs["-accel"] == "tcg"  # auto is resolved by the VM before launch; shown as TCG
    assert pairs["-serial"] == "mon:stdio"
    assert pairs["-append"] == "console=ttyS0 root=/dev/sda1 vlab.hostname=vlab"
    assert shlex.split(config.shell_command()) == argv
    micro = config.replace(machine="microvm") if host_tsc_khz() is not None else None
    if micro is not None:  # no HPET on microvm: the guest is told the host's TSC rate instead of calibrating
        append = micro.qemu_argv()[micro.qemu_argv().index("-append") + 1]
        assert append.endswith(f"vlab.hostname=vlab tsc_early_khz={host_tsc_khz()} tsc=reliable")


def test_launch_argv_uses_inherited_fds_nics_and_incoming(files: tuple[Path, Path]) -> None:
    kernel, initrd = files
    config = VMConfig(kernel=kernel, initrd=initrd, nics=(Nic(ip="10.0.2.15/24"), Nic("bridge", "lab", "10.9.0.1/24")))
    argv = config.qemu_argv(LaunchIO(7, 8, nic_fds=(None, 9), incoming="unix:/tmp/x.sock"), accel="kvm")
    line = " ".join(argv)
    assert "-accel kvm" in line
    assert "socket,id=qmp,fd=7" in line and "socket,id=console,fd=8" in line
    netdevs = [json.loads(argv[i + 1]) for i, word in enumerate(argv) if word == "-netdev"]
    assert netdevs == [{"type": "user", "id": "net0", "restrict": True}, {"type": "tap", "id": "net1", "fd": "9"}]
    assert "vlab.ip0=10.0.2.15/24 vlab.ip1=10.9.0.1/24" in line
    assert argv[-2:] == ["-incoming", "unix:/tmp/x.sock"]
    assert config.mac_address(0) != config.mac_address(1)


def test_console_ttys0_is_added_when_the_user_forgot_it(files: tuple[Path, Path]) -> None:
    kernel, initrd = files
    assert VMConfig(kernel=kernel, initrd=initrd, append="quiet").kernel_cmdline().startswith("console=ttyS0 quiet")
