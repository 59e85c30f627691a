"""The helpers the labs' tests call, on the example lab and on a lab whose solution is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.grading.grading_submissions import EXAMPLE_SOURCE
from vlab.grading.testing import assert_lab_grades, assert_not_stale


def test_example_lab_solution_scores_full_and_student_version_zero() -> None:
    solved, untouched = assert_lab_grades(EXAMPLE_SOURCE)
    assert (solved["total"], solved["status"]) == (8, "ok")
    assert (untouched["total"], untouched["status"]) == (0, "unanswered")


def test_a_lab_whose_solution_fails_its_checks_is_reported(tmp_path: Path) -> None:
    notebook = json.loads(EXAMPLE_SOURCE.read_text())
    q2 = next(c for c in notebook["cells"] if c["id"] == "c08")
    q2["source"] = q2["source"].replace("(guest_levels + 1) * (host_levels + 1) - 1", "guest_levels * host_levels")
    source = tmp_path / "00-broken.ipynb"
    source.write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match=r"scores 5/8 \(ok\); failed checks: \[.walk_4x4: you multiplied"):
        assert_lab_grades(source)


def test_missing_student_notebook_is_reported_as_missing(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="is missing: run `vlab assign"):
        assert_not_stale(EXAMPLE_SOURCE, tmp_path)
