"""The gradebook of the synthetic batch: CSV, feedback that never reveals hidden checks, summary."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from vlab.grading.gradebook import format_summary, write_gradebook
from vlab.grading.results import SubmissionResult


def test_csv_has_one_row_per_student_and_a_column_per_question(
    batch: dict[str, SubmissionResult], tmp_path: Path
) -> None:
    write_gradebook(list(batch.values()), tmp_path / "gradebook.csv", seconds=1.0)
    with (tmp_path / "gradebook.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["student", "lab", "q1", "q2", "q3", "total", "max", "status", "isolation"]
    by_student = {r["student"]: r for r in rows}
    assert by_student["partly-wrong"] == {
        "student": "partly-wrong",
        "lab": "00",
        "q1": "3",
        "q2": "0",
        "q3": "2",
        "total": "5",
        "max": "8",
        "status": "ok",
        "isolation": "root" if os.geteuid() == 0 else "userns",
    }
    assert by_student["tampered"]["q3"] == "0" and by_student["tampered"]["status"] == "tampered"
    assert len(rows) == len(batch)


def test_feedback_names_hidden_checks_but_never_their_messages_or_code(
    batch: dict[str, SubmissionResult], tmp_path: Path
) -> None:
    write_gradebook(list(batch.values()), tmp_path / "gradebook.csv")
    result = batch["partly-wrong"]
    hidden_messages = [c.message for c in result.checks if c.hidden and c.message]
    assert hidden_messages  # the grader knows why they failed ...
    for suffix in ("json", "html"):
        text = (tmp_path / "feedback" / f"partly-wrong.{suffix}").read_text()
        assert "walk_other_depths" in text and "answer_uses_your_parameters" in text
        assert "you added the two walks" in text  # the public hint is shown
        for message in hidden_messages:  # ... the student does not
            assert message not in text
        assert "2880067194370816120" not in text and "def " not in text
    data = json.loads((tmp_path / "feedback" / "partly-wrong.json").read_text())
    hidden = [c for c in data["checks"] if c["hidden"]]
    assert {c["name"]: c["passed"] for c in hidden} == {
        "fib_90": True,
        "walk_other_depths": False,
        "answer_uses_your_parameters": False,
        "mean_within_1_percent": True,
    }


def test_summary_counts_statuses_and_killed_processes(batch: dict[str, SubmissionResult], tmp_path: Path) -> None:
    summary = write_gradebook(list(batch.values()), tmp_path / "gb.csv", seconds=12.5)
    assert summary.submissions == len(batch)
    assert summary.status["ok"] == 2 and summary.status["leftovers"] == 1
    assert summary.leftover_processes_killed >= 2  # the VM and the fork bomb's children
    assert json.loads((tmp_path / "gb-summary.json").read_text()) == summary.to_dict()
    text = format_summary(summary)
    assert f"{len(batch)} submissions" in text and "graded in 12.5 s" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback", "gb-summary.json", "gb.csv"]


def test_gradebook_and_feedback_files_are_private_and_no_temp_file_is_left(
    batch: dict[str, SubmissionResult], tmp_path: Path
) -> None:
    write_gradebook(list(batch.values()), tmp_path / "gb.csv")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_mode & 0o777 == 0o600 for p in written), written
    assert not [p for p in written if p.name.startswith(".")]  # write_atomic's temp files are gone
