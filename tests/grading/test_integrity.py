"""vlab.grading.integrity: which locked cells are the instructor's, and what the grader pins from them."""

from __future__ import annotations

import json
from typing import Any

from tests.grading.grading_submissions import DATA
from vlab.grading.assign import build
from vlab.grading.bundle import Bundle
from vlab.grading.integrity import find_tampering, parse_submission, pinned_exports

SOURCE = DATA / "source" / "98-helpers.ipynb"


def _student() -> tuple[dict[str, Any], Bundle]:
    made = build(SOURCE)
    notebook, why = parse_submission(made.student_text)
    assert notebook is not None, why
    return notebook, Bundle.from_dict(made.bundle)


def _index(notebook: dict[str, Any], cell_id: str) -> int:
    return next(i for i, cell in enumerate(notebook["cells"]) if cell.get("id") == cell_id)


def test_a_verified_locked_cell_pins_the_names_its_header_exports() -> None:
    notebook, bundle = _student()
    assert pinned_exports(notebook, bundle) == {_index(notebook, "h05"): ("score_my_sort",),
                                                _index(notebook, "h09"): ("measured_total",)}


def test_an_edited_locked_cell_pins_nothing_and_metadata_cannot_add_a_pin() -> None:
    notebook, bundle = _student()
    measuring = notebook["cells"][_index(notebook, "h09")]
    measuring["source"] = measuring["source"].replace("[3]", "[2]")
    helper = notebook["cells"][_index(notebook, "h05")]
    helper["metadata"] = {"vlab": {"role": "readonly", "question": "q1", "exports": ["my_sort", "PARAMS"]}}
    assert [t.problem for t in find_tampering(notebook, bundle)] == ["edited"]
    assert pinned_exports(notebook, bundle) == {_index(notebook, "h05"): ("score_my_sort",)}


def test_a_moved_copy_of_the_locked_cell_pins_nothing() -> None:
    notebook, bundle = _student()
    measuring = notebook["cells"][_index(notebook, "h09")]
    notebook["cells"].append(json.loads(json.dumps(measuring)))  # two cells with its id: neither is verified
    assert _index(notebook, "h09") not in pinned_exports(notebook, bundle)
