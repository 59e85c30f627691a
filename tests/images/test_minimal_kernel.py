"""The optional minimal guest kernel (``vlab images build --kernel minimal``, :mod:`vlab.images.minimal`).

Unit tests: the config-fragment merge check, the checked-in fragment, the missing-build-dependency error, the
cache key. Real QEMU: the minimal flavour boots on ``-M microvm`` (PVH entry) to a shell, runs console
commands and cryptsetup (dm-crypt and AES/XTS are built in), and powers down on the ACPI button; its cold
boot is measured. Those tests use the minimal image only where it is already built: building it compiles a
kernel (4–5 minutes on 2 cores), too slow for CI, so they skip with the command that builds it.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.images import build, minimal
from vlab.images.manifest import Manifest
from vlab.paths import images_dir, vm_images_src
from vlab.qemu import VM, Disk, VMConfig
from vlab.qemu.config import host_tsc_khz

BUILD_COMMAND = "vlab images build --kernel minimal"

# -- unit tests ---------------------------------------------------------------------------------------


def test_fragment_settings_reads_values_and_not_set_lines_and_skips_comments() -> None:
    text = "# a comment\nCONFIG_A=y\n\n# CONFIG_B is not set\nCONFIG_NR_CPUS=8\nCONFIG_S=\"x y\"\n"
    assert minimal.fragment_settings(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_NR_CPUS": "8",
                                               "CONFIG_S": '"x y"'}


def test_a_malformed_fragment_line_is_named() -> None:
    with pytest.raises(VlabError) as caught:
        minimal.fragment_settings("CONFIG_A=y\nVIRTIO_BLK=y\n")
    assert caught.value.field == minimal.FRAGMENT and caught.value.value == "VIRTIO_BLK=y"
    assert "line 2" in caught.value.problem


def test_merge_check_passes_when_the_config_has_every_setting() -> None:
    config = "CONFIG_BLOCK=y\nCONFIG_VIRTIO_BLK=y\n# CONFIG_MODULES is not set\nCONFIG_OTHER=y\n"
    minimal.check_merged("CONFIG_BLOCK=y\nCONFIG_VIRTIO_BLK=y\n# CONFIG_MODULES is not set\n", config)
    minimal.check_merged("# CONFIG_ABSENT is not set\n", config)  # absent from .config is "n"


def test_merge_check_names_what_kconfig_dropped() -> None:
    # VIRTIO_BLK depends on BLOCK: without it olddefconfig silently drops it, and that guest has no /dev/vda
    with pytest.raises(VlabError) as caught:
        minimal.check_merged("CONFIG_VIRTIO_BLK=y\nCONFIG_NR_CPUS=8\n", "CONFIG_NR_CPUS=64\n")
    assert caught.value.field == minimal.FRAGMENT and caught.value.value == "CONFIG_VIRTIO_BLK=y"
    assert "CONFIG_VIRTIO_BLK=y (got n)" in caught.value.problem and "CONFIG_NR_CPUS=8 (got 64)" in caught.value.problem
    assert caught.value.fix and "depends on" in caught.value.fix


def test_the_checked_in_fragment_has_what_vlab_guests_need_and_no_modules() -> None:
    settings = minimal.fragment_settings((vm_images_src() / minimal.FRAGMENT).read_text())
    for name in ("64BIT", "PVH", "SERIAL_8250_CONSOLE", "BLK_DEV_INITRD", "RD_GZIP", "DEVTMPFS", "TMPFS",
                 "BINFMT_ELF", "BINFMT_SCRIPT", "UNIX", "INET", "VIRTIO_MMIO", "VIRTIO_PCI", "VIRTIO_BLK",
                 "VIRTIO_NET", "VIRTIO_BALLOON", "HOTPLUG_PCI_ACPI", "VIRTIO_CONSOLE", "ACPI_BUTTON", "INPUT_EVDEV",
                 "RTC_DRV_CMOS", "FUTEX", "EPOLL", "DM_CRYPT", "CRYPTO_AES", "CRYPTO_XTS", "CRYPTO_USER_API_SKCIPHER"):
        assert settings.get(f"CONFIG_{name}") == "y", name
    assert settings.get("CONFIG_MODULES", "n") == "n"  # all built in: the init's module list is empty


def test_missing_build_dependencies_give_the_exact_apt_get_line(tmp_path: Path) -> None:
    deps = (("linux-source-6.1", str(tmp_path / "no-such.tar.xz")), ("gcc", "gcc"),
            ("flex", "vlab-no-such-command-flex"), ("libelf-dev", str(tmp_path / "libelf.h")))
    assert minimal.missing_packages(deps) == ["linux-source-6.1", "flex", "libelf-dev"]
    with pytest.raises(VlabError) as caught:
        minimal.require_build_deps(deps)
    assert caught.value.field == "--kernel" and caught.value.value == "minimal"
    assert caught.value.fix is not None
    assert caught.value.fix.startswith("sudo apt-get install -y linux-source-6.1 flex libelf-dev ")
    minimal.require_build_deps((("gcc", "gcc"),))  # nothing missing: no error


def test_a_build_without_its_dependencies_stops_before_writing_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_IMAGES", str(tmp_path / "cache"))
    monkeypatch.setattr(minimal, "BUILD_DEPS", (("bison", "vlab-no-such-command-bison"),))
    with pytest.raises(VlabError, match="bison") as caught:
        build.build_images(kernel="minimal", report=lambda line: None)
    assert caught.value.fix is not None and "apt-get install -y bison" in caught.value.fix
    assert not (tmp_path / "cache").exists()


def test_an_unknown_flavour_is_refused() -> None:
    with pytest.raises(VlabError) as caught:
        build.build_images(kernel="tiny", report=lambda line: None)
    assert caught.value.field == "--kernel" and caught.value.value == "tiny"


def test_the_cache_key_follows_source_version_fragment_and_compiler() -> None:
    key = minimal.kernel_key("6.1.1-1", b"CONFIG_A=y\n", "gcc 12")
    assert key == minimal.kernel_key("6.1.1-1", b"CONFIG_A=y\n", "gcc 12")
    assert len({key, minimal.kernel_key("6.1.1-2", b"CONFIG_A=y\n", "gcc 12"),
                minimal.kernel_key("6.1.1-1", b"CONFIG_A=n\n", "gcc 12"),
                minimal.kernel_key("6.1.1-1", b"CONFIG_A=y\n", "gcc 13")}) == 4


def test_the_fragment_does_not_change_the_stock_images_inputs_key(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "vm-images"
    (src / "linux").mkdir(parents=True)
    (src / "linux" / "init").write_text("#!/bin/sh\n")
    monkeypatch.setattr(build, "vm_images_src", lambda: src)
    before = build.inputs_key("k")
    (src / minimal.FRAGMENT).write_text("CONFIG_A=y\n")
    assert build.inputs_key("k") == before


def test_a_killed_kernel_builds_leftovers_are_removed_under_the_lock(tmp_path: Path) -> None:
    leftover = tmp_path / ".build-abc" / "src"
    leftover.mkdir(parents=True)
    with build._locked(tmp_path):
        assert not (tmp_path / ".build-abc").exists()


# -- real QEMU, where the minimal image is built ------------------------------------------------------


def _minimal_image() -> Path:
    directory = build.flavour_dir("minimal")
    manifest = Manifest.load(directory)
    if manifest is None or manifest.details.get("flavour") != "minimal" or manifest.problems(directory):
        pytest.skip(f"the minimal-kernel image is not built in {directory}: run `{BUILD_COMMAND}` (it compiles "
                    "a kernel, ~5 min on 2 cores, too slow for CI; then it is cached)")
    if host_tsc_khz() is None:
        pytest.skip("this host's TSC rate is unknown: vlab does not boot -M microvm here")
    return directory


@pytest.mark.qemu
@pytest.mark.slow
def test_the_minimal_image_is_a_cache_hit_with_its_flavour_recorded() -> None:
    directory = _minimal_image()
    manifest = Manifest.load(directory)
    assert manifest is not None and manifest.details["kernel_modules"] == []
    key, inputs = minimal.current_inputs()
    cached = minimal.find_cached(images_dir() / build.KERNELS_DIR, key)
    assert cached is not None, "the kernel cache has no build for today's source package, fragment and gcc"
    info = json.loads((cached.directory / minimal.INFO_NAME).read_text())
    assert info["source_version"] == inputs["source_version"] == manifest.sources[minimal.SOURCE_PACKAGE]
    assert info["sha256"]["vmlinux"] == manifest.files["vmlinux"].sha256  # the image boots the cached bytes


PROMPT = re.compile(r"Enter passphrase for [^\n]*: ")


@pytest.mark.qemu
@pytest.mark.slow
def test_the_minimal_kernel_boots_on_microvm_runs_commands_and_cryptsetup_and_powers_down(tmp_path: Path) -> None:
    directory = _minimal_image()
    disk = tmp_path / "blank.img"
    with disk.open("wb") as blank:
        blank.truncate(32 << 20)
    config = VMConfig(accel="tcg", name="minimal-kernel", kernel=directory / "vmlinuz",
                      initrd=directory / build.MINIMAL_INITRD_NAME, disks=(Disk(disk, overlay=False),))
    assert config.boot_machine() == "microvm" and config.boot_kernel() == directory / "vmlinux"
    started = time.perf_counter()
    vm = VM(config)
    try:
        vm.start(cold=True)
        assert vm.console.run("true").status == 0
        seconds = time.perf_counter() - started
        print(f"minimal kernel, cold boot on microvm to the first command: {seconds:.2f} s")
        assert seconds < 20  # a sanity bound only; bench/bench_fast_start.py measures it properly
        version = vm.console.run("cat /proc/version").output
        assert "vlab@vlab" in version and "6.1." in version  # KBUILD_BUILD_USER/HOST: this is the minimal build
        # no module support at all, and the devices the guest needs are there, built in
        assert vm.console.run("test -e /proc/modules").status == 1
        assert vm.console.run("ls /dev/vda /dev/rtc0 /dev/input/event0").status == 0
        assert "virtio-mmio" in vm.console.run("ls /sys/bus/platform/drivers").output
        # lab 05's cryptsetup: dm-crypt, AES/XTS and AF_ALG are built in (no insmod on first use)
        form = ("cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "
                "/dev/vda")
        start = vm.console.position
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(vm.console.run, form, 90.0)
            vm.console.wait_for(PROMPT, 60, since=start)
            time.sleep(0.5)  # cryptsetup flushes input typed before it turned echo off (see test_guest_luks)
            vm.console.send("minimal passphrase\n")
            formatted = future.result()
        assert formatted.status == 0, formatted.output
        assert disk.read_bytes()[:6] == b"LUKS\xba\xbe"
        assert "aes-xts-plain64" in vm.console.run("cryptsetup luksDump /dev/vda").output
    finally:
        stopped_by = vm.stop(timeout=10)
    assert stopped_by == "powerdown"  # ACPI button -> busybox acpid -> poweroff


def _elf_with_pvh_note() -> bytes:
    """A minimal ELF64 whose one PT_NOTE segment holds a ``Xen`` note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY)."""
    note = (4).to_bytes(4, "little") + (4).to_bytes(4, "little") + (18).to_bytes(4, "little") + b"Xen\0" + b"\0" * 4
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    header[0x20:0x28] = (64).to_bytes(8, "little")  # e_phoff
    header[0x36:0x38] = (56).to_bytes(2, "little")  # e_phentsize
    header[0x38:0x3A] = (1).to_bytes(2, "little")  # e_phnum
    phdr = bytearray(56)
    phdr[0:4] = (4).to_bytes(4, "little")  # PT_NOTE
    phdr[8:16] = (120).to_bytes(8, "little")
    phdr[32:40] = len(note).to_bytes(8, "little")
    # 0x140 bytes: the size word then starts with 0x40, which liblzma's format detection takes for an LZMA-alone
    # header (as with the real minimal kernel), so a one-shot decompress fails on it
    return bytes(header + phdr + note).ljust(0x140, b"\0")


@pytest.mark.parametrize("compress", ["xz", "gzip"])
def test_pvh_elf_reads_a_payload_followed_by_the_kernel_builds_size_word(tmp_path: Path, compress: str) -> None:
    # the minimal kernel's bzImage is XZ (tinyconfig); like every bzImage, its payload ends with the 4-byte
    # uncompressed size, which a one-shot decompressor takes for a second, broken stream
    import gzip
    import lzma

    from vlab.images import kernel

    elf = _elf_with_pvh_note()
    packed = lzma.compress(elf, format=lzma.FORMAT_XZ) if compress == "xz" else gzip.compress(elf)
    payload = packed + len(elf).to_bytes(4, "little")
    image = bytearray(5 * 512)
    image[0x1F1] = 4  # setup_sects: the payload offset counts from (4 + 1) * 512
    image[0x202:0x206] = b"HdrS"
    image[0x248:0x24C] = (0).to_bytes(4, "little")
    image[0x24C:0x250] = len(payload).to_bytes(4, "little")
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(bytes(image) + payload)
    out = kernel.pvh_elf(bzimage, tmp_path / "vmlinux")
    assert out is not None and out.read_bytes() == elf
