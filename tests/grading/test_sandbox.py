"""Each synthetic submission gets its exact score and status, graded in the real sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlab.grading.checks import CheckResult
from vlab.grading.integrity import Tampering
from vlab.grading.results import QuestionScore, SubmissionResult

EXPECTED = {  # student: (total out of 8, status)
    "correct": (8, "ok"),
    "partly-wrong": (5, "ok"),
    "untouched": (0, "unanswered"),
    "syntax-error": (5, "errors"),
    "infinite-loop": (7, "timeout"),
    "memory-hog": (8, "memory"),
    "fork-bomb": (8, "processes+leftovers"),
    "reads-hidden": (8, "errors"),
    "monkeypatch": (0, "unanswered"),
    "tampered": (6, "tampered"),
    "leaves-vm": (8, "leftovers"),
    "kernel-dies": (0, "kernel-died"),
    "invalid": (0, "invalid"),
}


def _checks(result: SubmissionResult) -> dict[str, CheckResult]:
    return {c.name: c for c in result.checks}


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_submission_gets_exact_score_and_status(batch: dict[str, SubmissionResult], student: str) -> None:
    total, status = EXPECTED[student]
    result = batch[student]
    assert (result.total, result.status) == (total, status), result


def test_every_submission_of_the_batch_was_graded(batch: dict[str, SubmissionResult]) -> None:
    assert sorted(batch) == sorted(EXPECTED)
    assert all(r.max == 8 for r in batch.values())


def test_partly_wrong_gets_the_misconception_hint(batch: dict[str, SubmissionResult]) -> None:
    checks = _checks(batch["partly-wrong"])
    assert not checks["walk_4x4"].passed
    assert "you added the two walks" in checks["walk_4x4"].message
    assert not checks["walk_other_depths"].passed and checks["walk_other_depths"].hidden
    assert batch["partly-wrong"].questions["q2"].score == 0
    assert batch["partly-wrong"].questions["q1"].score == 3


def test_infinite_loop_is_interrupted_and_a_hanging_call_times_out(batch: dict[str, SubmissionResult]) -> None:
    result = batch["infinite-loop"]
    assert any(e.ename == "CellTimeout" for e in result.cell_errors)
    assert "did not return within 3 s" in _checks(result)["fib_90"].message
    assert _checks(result)["fib_10"].passed


def test_memory_hog_gets_memory_error_and_the_rest_still_runs(batch: dict[str, SubmissionResult]) -> None:
    assert [e.ename for e in batch["memory-hog"].cell_errors] == ["MemoryError"]


def test_fork_bomb_is_limited_and_its_processes_killed(batch: dict[str, SubmissionResult]) -> None:
    result = batch["fork-bomb"]
    assert [e.ename for e in result.cell_errors] == ["BlockingIOError"]
    assert 1 <= len(result.leftovers) <= 64  # the process limit of the example lab


def test_reading_hidden_checks_and_secret_from_disk_fails(batch: dict[str, SubmissionResult]) -> None:
    (error,) = batch["reads-hidden"].cell_errors
    assert error.ename == "RuntimeError"
    assert "READ" not in error.evalue
    assert "leak=absent" in error.evalue
    assert "PermissionError" in error.evalue or "FileNotFoundError" in error.evalue


def test_monkeypatching_the_checker_changes_nothing(batch: dict[str, SubmissionResult]) -> None:
    result = batch["monkeypatch"]
    assert not any(c.passed for c in result.checks)
    assert result.cell_errors == [e for e in result.cell_errors if e.ename == "NotImplementedError"]


def test_tampered_readonly_cell_zeroes_its_question(batch: dict[str, SubmissionResult]) -> None:
    result = batch["tampered"]
    assert result.questions["q3"] == QuestionScore(0.0, 2.0, True)
    assert result.tampered_cells == [Tampering("c12", "q3", "edited")]


def test_vm_left_running_is_counted_and_killed(batch: dict[str, SubmissionResult], vm_marker: str) -> None:
    (leftover,) = batch["leaves-vm"].leftovers
    assert "qemu-system-x86_64" in leftover.command and vm_marker in leftover.command
    assert not _processes_with(vm_marker)


def test_dead_kernel_scores_zero_without_crashing_the_grader(batch: dict[str, SubmissionResult]) -> None:
    assert "the notebook exported nothing" in batch["kernel-dies"].export_problems["*"]


def test_nothing_is_left_behind(batch: dict[str, SubmissionResult], batch_tmp: Path) -> None:
    assert list(batch_tmp.iterdir()) == []  # working directories, result files
    # every process the batch started (supervisors, kernels, hosts, QEMU) inherited TMPDIR from it
    assert not _processes_with(str(batch_tmp), "environ")


def _processes_with(marker: str, where: str = "cmdline") -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry}/{where}").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_without_root_or_user_namespaces_grading_is_refused_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that allows neither is faked here (this one allows both): geteuid and the probe are patched."""
    from vlab.errors import VlabError
    from vlab.grading import sandbox

    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the os module sandbox uses
    monkeypatch.setattr(sandbox, "userns_available", lambda: False)
    with pytest.raises(VlabError, match="--no-isolation"):
        sandbox.isolation_mode("auto")
    assert sandbox.isolation_mode("none") == "none"
    monkeypatch.setattr(sandbox, "userns_available", lambda: True)
    assert sandbox.isolation_mode("auto") == "userns"
