"""vlab assign: the student notebook and the bundle, deterministic, and staleness detection."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

from tests.grading.grading_submissions import DATA, EXAMPLE_SOURCE
from vlab.grading.assign import assign, build, is_stale
from vlab.grading.testing import assert_not_stale


def _cells(text: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in json.loads(text)["cells"]}


def test_solutions_become_stubs_and_no_solution_text_remains() -> None:
    student = build(EXAMPLE_SOURCE).student_text
    cells = _cells(student)
    assert "NotImplementedError" in cells["c04"]["source"] and "a, b = b, a + b" not in student
    assert "(guest_levels + 1) * (host_levels + 1)" not in student
    assert "BEGIN SOLUTION" not in student


def test_hidden_and_omitted_cells_are_removed_and_go_to_the_bundle() -> None:
    result = build(EXAMPLE_SOURCE)
    assert {"c06", "c10", "c14", "c15"}.isdisjoint(_cells(result.student_text))
    assert "2880067194370816120" not in result.student_text
    hidden = [c["cell"] for c in result.bundle["check_sources"] if c["hidden"]]
    assert hidden == ["c06", "c10", "c14"]
    assert "instructor note" not in result.bundle_text


def test_outputs_cleared_and_readonly_cells_locked(tmp_path: Path) -> None:
    source = json.loads(EXAMPLE_SOURCE.read_text())
    source["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "secret output"}]
    source["cells"][1]["execution_count"] = 3
    path = tmp_path / "00-example.ipynb"
    path.write_text(json.dumps(source))
    result = build(path)
    cells = _cells(result.student_text)
    assert all(c.get("outputs", []) == [] for c in cells.values())
    assert "secret output" not in result.student_text
    assert cells["c12"]["metadata"]["editable"] is False and cells["c05"]["metadata"]["deletable"] is False


def test_bundle_lists_checks_points_exports_and_checksums() -> None:
    bundle = build(EXAMPLE_SOURCE).bundle
    assert {q: i["points"] for q, i in bundle["questions"].items()} == {"q1": 3, "q2": 3, "q3": 2}
    assert bundle["exports"] == ["fib", "walk_entries", "answer_q2", "mean_latency"]
    assert [r["cell"] for r in bundle["readonly"]] == ["c02", "c05", "c09", "c12"]
    assert "def params_for(seed)" in bundle["params_source"]
    assert bundle["limits"]["cell_timeout"] == 4


def test_output_is_deterministic_and_written_atomically(tmp_path: Path) -> None:
    first = assign(EXAMPLE_SOURCE, tmp_path)
    again = build(EXAMPLE_SOURCE, tmp_path)
    assert first.student_path.read_text() == again.student_text
    assert first.bundle_path.read_text() == again.bundle_text
    assert stat.S_IMODE(first.bundle_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["00-example.ipynb", "00.json", "autograder"]


def test_staleness_is_detected(tmp_path: Path) -> None:
    source = tmp_path / "source" / "00-example.ipynb"
    source.parent.mkdir()
    shutil.copy(EXAMPLE_SOURCE, source)
    assert is_stale(source)  # nothing generated yet
    assign(source)
    assert not is_stale(source)
    notebook = json.loads(source.read_text())
    notebook["cells"][0]["source"] += "\nA new sentence."
    source.write_text(json.dumps(notebook))
    assert is_stale(source)


def test_committed_example_student_notebook_is_not_stale() -> None:
    assert_not_stale(EXAMPLE_SOURCE, DATA)


def test_a_top_level_stub_is_tagged_so_run_all_carries_on() -> None:
    cells = _cells(build(EXAMPLE_SOURCE).student_text)
    assert "raises-exception" in cells["c13"]["metadata"]["tags"]  # `mean_latency = ...` became a raise
    assert "tags" not in cells["c04"]["metadata"]  # fib's stub raises only when called
