"""Lab 08 notebook: the committed student version is current, grading gives 100 % / 0 %, and nothing is left.

Grading runs the notebooks as a throw-away uid when the grader is root, so this covers the lab's unprivileged
path: the student's runtime is rootless (a user namespace), the cgroup limits are skipped, and the hidden checks
call the student's runtime and unpacker in the jailed student process on files they have never seen.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from vlab.grading.testing import assert_lab_grades, assert_not_stale

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "08-containers.ipynb"

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def test_lab_08_student_notebook_is_current() -> None:
    assert_not_stale(SOURCE)


def test_lab_08_solution_scores_full_marks_and_student_version_zero() -> None:
    solved, untouched = assert_lab_grades(SOURCE)
    assert {c["question"] for c in solved["checks"]} == {"q1", "q2", "q3", "q4", "q5", "q6"}
    assert untouched["status"] in ("ok", "unanswered")
    leftover = subprocess.run(["pgrep", "-af", "qemu-system.*-name l8vm"], capture_output=True, text=True).stdout
    assert not leftover, f"the lab's VM outlived the grading runs: {leftover}"


def test_no_line_of_a_solution_is_visible_in_the_student_notebook() -> None:
    """Each solution region's lines (other than trivial ones) appear nowhere in what the student gets."""
    from vlab.grading.assign import build

    student = build(SOURCE).student_text
    notebook = json.loads(SOURCE.read_text())
    solutions = [re.search(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", "".join(cell["source"]), re.S)
                 for cell in notebook["cells"]]
    lines = {line.strip() for found in solutions if found for line in found.group(1).splitlines()}
    toolbox = {"die_with_parent()", "write_id_maps(uid, gid)"}  # the wrappers the prose lists, not an answer
    visible = [line for line in lines - toolbox if len(line) > 12 and json.dumps(line)[1:-1] in student]
    assert not visible, f"solution lines visible to the student: {visible}"
