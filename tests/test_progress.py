"""Tests for vlab.progress: display-mode detection, tqdm bars, and the one-line-per-step plain mode."""

from __future__ import annotations

from typing import Any

import pytest

from vlab.errors import VlabError
from vlab.progress import display_mode, progress, steps


def test_vlab_plain_forces_plain_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_PLAIN", "1")
    assert display_mode() == "plain"


def test_without_a_tty_or_kernel_the_mode_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLAB_PLAIN", raising=False)
    # pytest captures stderr, so it is not a TTY here, and no Jupyter kernel runs this test
    assert display_mode() == "plain"


def test_display_mode_is_notebook_inside_a_real_jupyter_kernel() -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        outputs: list[dict[str, Any]] = []
        client.execute_interactive(
            "from vlab.progress import display_mode, progress\n"
            "print(display_mode())\n"
            "print(type(progress(3, 'x').widget).__name__)",
            output_hook=outputs.append, timeout=60)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    printed = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert printed.split() == ["notebook", "TqdmHBox"]


def test_plain_progress_yields_every_item_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(["a", "b", "c"], desc="letters", mode="plain")
    assert list(bar) == ["a", "b", "c"]
    assert (bar.n, bar.total, bar.closed) == (3, 3, True)
    assert capsys.readouterr().err == ""


def test_a_count_iterates_a_range_and_a_generator_has_no_total() -> None:
    assert list(progress(4, mode="plain")) == [0, 1, 2, 3]
    assert progress((i for i in range(2)), mode="plain").total is None
    assert progress((i for i in range(2)), total=2, mode="plain").total == 2


def test_terminal_progress_draws_a_tqdm_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress(range(5), desc="booting", unit="VM", mode="terminal"):
        pass
    err = capsys.readouterr().err
    assert "booting" in err
    assert "5/5" in err


def test_manual_updates_in_a_with_block(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(1000, desc="download", unit="B", mode="terminal") as bar:
        bar.update(600)
        bar.update(400)
        bar.set_description("download done")
    assert bar.closed and bar.n == 1000
    assert "1000/1000" in capsys.readouterr().err


def test_notebook_mode_builds_an_ipywidgets_bar() -> None:
    bar = progress(3, desc="grading", mode="notebook")
    for _ in bar:
        pass
    assert type(bar.widget).__name__ == "TqdmHBox"
    assert bar.widget.children[1].value == 3  # the IntProgress inside tqdm's box


def test_plain_steps_print_one_line_each_then_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    with steps(2, "Building image", mode="plain") as step:
        step("download kernel")
        step("pack initramfs")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["Building image: [1/2] download kernel", "Building image: [2/2] pack initramfs"]
    assert lines[2].startswith("Building image: done in ")
    assert len(lines) == 3


def test_plain_steps_name_the_step_that_failed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), steps(3, "Boot", mode="plain") as step:
        step("start qemu")
        step("wait for login")
        raise RuntimeError("timeout")
    assert step.done == 1
    assert "failed at step 'wait for login'" in capsys.readouterr().err.splitlines()[-1]


def test_terminal_steps_advance_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with steps(2, "Migrate", mode="terminal") as step:
        step("setup")
        step("pre-copy")
    assert step.done == 2
    assert "2/2" in capsys.readouterr().err


def test_unknown_mode_and_negative_count_are_refused() -> None:
    with pytest.raises(VlabError, match="mode"):
        progress(3, mode="html")  # type: ignore[call-overload]
    with pytest.raises(VlabError, match="negative"):
        progress(-1)
