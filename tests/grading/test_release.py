"""Local = graded: `vlab assign --course/--roster` writes copies that know their student, and the numbers a
student reads in their own copy are the ones the real grader uses."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.grading.grading_submissions import EXAMPLE_SOURCE, Q2, WALK
from vlab.cli import main
from vlab.errors import VlabError
from vlab.grading.assign import assign, build, questions_table
from vlab.grading.format import cell_source
from vlab.grading.testing import grade_notebook


def _cell(notebook: dict[str, Any], role: str) -> dict[str, Any]:
    return next(c for c in notebook["cells"] if c.get("metadata", {}).get("vlab", {}).get("role") == role)


def test_roster_gives_each_student_a_locked_copy_that_names_them(tmp_path: Path) -> None:
    result = assign(EXAMPLE_SOURCE, tmp_path, course="os-2026", roster=["alice", "bob.m"])
    assert [s for s, _ in result.released] == ["alice", "bob.m"]
    for student, path in result.released:
        assert path == tmp_path / "release" / student / EXAMPLE_SOURCE.name
        release = _cell(json.loads(path.read_text()), "release")
        assert f'RELEASED_FOR = "{student}"' in cell_source(release) and 'COURSE = "os-2026"' in cell_source(release)
        assert release["metadata"]["editable"] is False
    course_copy = _cell(json.loads(result.student_path.read_text()), "release")
    assert "RELEASED_FOR = None" in cell_source(course_copy)
    bundle = result.bundle
    assert bundle["course"] == "os-2026" and bundle["release_cell"] == course_copy["id"]
    # the grader's copy of the params cell knows the course, never a student
    assert 'COURSE = "os-2026"' in bundle["params_source"] and "RELEASED_FOR = None" in bundle["params_source"]
    assert bundle["release_cell"] not in {r["cell"] for r in bundle["readonly"]}  # per student: not checksummed


@pytest.mark.parametrize(
    ("roster", "course", "problem"),
    [
        (["alice", "alice"], "c", "listed twice"),
        (["alice", "../../etc"], "c", "roster line 2"),
        (["alice\nbob"], "c", "roster line 1"),
        (["alice"], "os 2026; rm", "course"),
    ],
)
def test_bad_roster_or_course_writes_nothing(tmp_path: Path, roster: list[str], course: str, problem: str) -> None:
    with pytest.raises(VlabError, match=problem):
        assign(EXAMPLE_SOURCE, tmp_path, course=course, roster=roster)
    assert list(tmp_path.iterdir()) == []


def test_cli_assign_with_course_and_roster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roster = tmp_path / "roster.txt"
    roster.write_text("# course os-2026\nalice\n\nbob\n")
    out = tmp_path / "course"
    assert main(["assign", str(EXAMPLE_SOURCE), "--out", str(out), "--course", "os-2026", "--roster", str(roster)]) == 0
    assert "2 released copies" in capsys.readouterr().out
    assert sorted(p.parent.name for p in (out / "release").glob("*/*.ipynb")) == ["alice", "bob"]
    assert json.loads((out / "autograder" / "00.json").read_text())["course"] == "os-2026"
    assert main(["assign", str(EXAMPLE_SOURCE), "--out", str(out), "--course", "os-2026", "--check"]) == 0
    assert main(["assign", str(EXAMPLE_SOURCE), "--out", str(out), "--check"]) == 1  # other course: stale


def test_questions_cell_is_generated_from_the_checks(tmp_path: Path) -> None:
    notebook = json.loads(EXAMPLE_SOURCE.read_text())
    cell = {"cell_type": "markdown", "id": "qs", "metadata": {}, "source": "<!-- vlab: questions -->"}
    notebook["cells"].insert(1, cell)
    source = tmp_path / "source" / "00-example.ipynb"
    source.parent.mkdir()
    source.write_text(json.dumps(notebook))
    result = build(source)
    table = cell_source(next(c for c in json.loads(result.student_text)["cells"] if c["id"] == "qs"))
    assert table == questions_table(result.bundle["questions"])
    assert "| q1 |" in table and "| q3 |" in table and "**8**" in table and "practice instance" in table


def _locally_printed_params(student_text: str) -> dict[str, Any]:
    """Run the release and params cells as the student's own kernel does (no grader environment)."""
    notebook = json.loads(student_text)
    namespace: dict[str, Any] = {}
    saved = {k: os.environ.pop(k) for k in ("VLAB_STUDENT_ID", "JUPYTERHUB_USER") if k in os.environ}
    try:
        for role in ("release", "params"):
            exec(cell_source(_cell(notebook, role)), namespace)
    finally:
        os.environ.update(saved)
    result: dict[str, Any] = namespace["PARAMS"]
    return result


@pytest.mark.slow
def test_the_number_a_student_writes_down_locally_is_what_the_grader_expects() -> None:
    """The issue's case: a student who copies the value their own notebook printed must not fail at grading."""
    with tempfile.TemporaryDirectory(prefix="vlab-release-") as tmp:
        result = assign(EXAMPLE_SOURCE, Path(tmp), course="os-2026", roster=["alice"])
        alice = result.released[0][1]
        params = _locally_printed_params(alice.read_text())
        levels = (params["guest_levels"] + 1) * (params["host_levels"] + 1) - 1
        notebook = json.loads(alice.read_text())
        for cell in notebook["cells"]:
            if cell["id"] == Q2:  # the function, and the number as alice read it off her screen
                cell["source"] = WALK.split("\n\n\n")[0] + f"\n\n\nanswer_q2 = {levels}"
        submission = Path(tmp) / "alice.ipynb"
        submission.write_text(json.dumps(notebook))
        graded = grade_notebook(submission, result.bundle, "alice")
        shutil.rmtree(Path(tmp) / "release")
    q2 = {c["name"]: c["passed"] for c in graded["checks"] if c["question"] == "q2"}
    assert q2["answer_uses_your_parameters"], graded["checks"]
