"""Lab 03 notebook: the committed student version is current, and grading gives 100 % / 0 %."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.grading.testing import assert_lab_grades, assert_not_stale

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "03-memory.ipynb"

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def test_lab_03_student_notebook_is_current() -> None:
    assert_not_stale(SOURCE)


def test_lab_03_solution_scores_full_marks_and_student_version_zero() -> None:
    solved, untouched = assert_lab_grades(SOURCE)
    assert {c["question"] for c in solved["checks"]} == {f"q{i}" for i in range(1, 7)}
    assert untouched["status"] in ("ok", "unanswered")
