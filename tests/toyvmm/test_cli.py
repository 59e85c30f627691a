from __future__ import annotations

import pytest

from vlab.cli import main


def test_toyvmm_run_prints_uart_output_and_exit_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toyvmm", "run", "hello", "--guests", "2", "--scheduler", "credit", "--log"]) == 0
    out = capsys.readouterr().out
    assert out.count("hello from toyvmm guest") == 2
    assert "'MMIO_WRITE': 47" in out and "csrw stvec, t0" in out


def test_toyvmm_list_names_every_program(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toyvmm", "list"]) == 0
    assert "attacker" in capsys.readouterr().out


def test_unknown_scheduler_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toyvmm", "run", "hello", "--scheduler", "fifo"]) == 1
    assert "unknown scheduler" in capsys.readouterr().err
