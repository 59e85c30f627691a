"""Disks: a qcow2 overlay leaves its base untouched; a LUKS image holds only ciphertext on the host."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu import VM, Disk, VMConfig
from vlab.qemu.disks import create_image, image_info

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PLAINTEXT = "VLAB-PLAINTEXT-0123456789"


def _write_and_read_back(vm: VM) -> str:
    vm.console.run(f"echo {PLAINTEXT} | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")
    return vm.console.run("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -1").output.strip("\0\n")


def test_luks_image_is_ciphertext_on_the_host_and_plaintext_in_the_guest(config: VMConfig, tmp_path: Path) -> None:
    image = create_image(tmp_path / "secret.qcow2", "16M", secret="correct horse", iter_time_ms=10)
    assert image_info(image)["format-specific"]["data"]["encrypt"]["format"] == "luks"  # type: ignore[index]
    with VM(config.replace(disks=(Disk(image, secret="correct horse"),))) as vm:
        assert _write_and_read_back(vm) == PLAINTEXT
    assert PLAINTEXT.encode() not in image.read_bytes()


def test_plain_image_written_through_shows_plaintext_on_the_host(config: VMConfig, tmp_path: Path) -> None:
    # the control for the test above: without encryption the same bytes are visible in the file
    image = create_image(tmp_path / "plain.qcow2", "16M")
    with VM(config.replace(disks=(Disk(image, overlay=False),))) as vm:
        assert _write_and_read_back(vm) == PLAINTEXT
    assert PLAINTEXT.encode() in image.read_bytes()


def test_overlay_keeps_the_base_image_unchanged(config: VMConfig, tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"BASE-CONTENT\n".ljust(1024 * 1024, b"\0"))
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    with VM(config.replace(disks=(Disk(base),))) as vm:
        assert vm.console.run("head -1 /dev/vda").output == "BASE-CONTENT\n"
        assert _write_and_read_back(vm) == PLAINTEXT  # the guest sees its own write...
        workdir = vm.workdir
        assert workdir is not None and (workdir / "disk0.qcow2").exists()
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest  # ...the base never does
    assert not workdir.exists()


def test_wrong_passphrase_fails_with_qemu_message(config: VMConfig, tmp_path: Path) -> None:
    image = create_image(tmp_path / "secret.qcow2", "16M", secret="right", iter_time_ms=10)
    vm = VM(config.replace(disks=(Disk(image, secret="wrong"),)))
    with pytest.raises(VlabError) as caught:
        vm.start(timeout=20)
    assert "Invalid password" in str(caught.value) or "password" in str(caught.value).lower()


def test_create_image_leaves_nothing_half_made(tmp_path: Path) -> None:
    with pytest.raises(VlabError):
        create_image(tmp_path / "missing-dir" / "x.qcow2", "16M")
    with pytest.raises(VlabError, match="positive"):
        create_image(tmp_path / "x.qcow2", "-1M")
    assert list(tmp_path.iterdir()) == []
