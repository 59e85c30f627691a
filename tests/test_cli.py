"""The ``vlab`` command line: the console script and ``python -m vlab`` are the same program."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlab.cli import build_parser, main


def test_help_lists_the_subsystem_commands() -> None:
    text = build_parser().format_help()
    for command in ("doctor", "images", "tour"):
        assert command in text


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: vlab" in capsys.readouterr().out


def test_python_dash_m_and_console_script_agree() -> None:
    via_module = subprocess.run(
        [sys.executable, "-m", "vlab", "images", "path"], capture_output=True, text=True, check=True
    ).stdout
    script = shutil.which("vlab") or str(Path(sys.executable).parent / "vlab")
    via_script = subprocess.run([script, "images", "path"], capture_output=True, text=True, check=True).stdout
    assert via_module == via_script and via_module.strip()
