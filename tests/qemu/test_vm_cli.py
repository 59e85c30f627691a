"""``vlab vm run`` and ``vlab vm argv`` through the real command line."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from vlab.cli import main


def test_vm_argv_prints_the_qemu_command_for_a_textbook_conf(guest_images: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    kernel, initrd = guest_images
    conf = tmp_path / "vm.conf"
    conf.write_text('kernel = "/boot/vmlinuz"\nappended = "console=ttyS0"\nmem = "512M"\nvcpus = "1"\n')
    assert main(["vm", "argv", "--conf", str(conf), "--kernel", str(kernel), "--initrd", str(initrd)]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[0] == "qemu-system-x86_64" and argv[argv.index("-m") + 1] == "512"


def test_vm_argv_with_a_bad_conf_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "vm.conf"
    conf.write_text('vcpus = "0"\n')
    assert main(["vm", "argv", "--conf", str(conf)]) == 1
    assert "vcpus = '0'" in capsys.readouterr().err


@pytest.mark.qemu
@pytest.mark.slow
def test_vm_run_returns_the_guest_command_output_and_status(guest_images: tuple[Path, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "run", "--accel", "tcg", "--", "echo from-guest; exit 3"]) == 3
    assert capsys.readouterr().out == "from-guest\n"
