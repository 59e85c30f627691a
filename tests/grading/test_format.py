"""The source format: roles from metadata or header comments, solution stubs, checksums."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.grading.format import CellSpec, cell_spec, defined_names, digest, lab_id, strip_solution


def code(source: str, **meta: object) -> dict[str, object]:
    return {"cell_type": "code", "source": source, "metadata": meta}


def test_role_from_header_comment_with_question_and_exports() -> None:
    spec = cell_spec(code("# vlab: solution q2 exports=walk,answer title=Question_2\nx = 1"))
    assert spec == CellSpec("solution", "q2", ("walk", "answer"), "Question 2")


def test_role_from_metadata_wins_over_header() -> None:
    spec = cell_spec(code("# vlab: hidden q1\n", vlab={"role": "readonly", "question": "q3"}))
    assert (spec.role, spec.question) == ("readonly", "q3")


def test_markdown_header_comment() -> None:
    cell = {"cell_type": "markdown", "source": "<!-- vlab: readonly q1 -->\nText", "metadata": {}}
    assert cell_spec(cell).role == "readonly"


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ("# vlab: solutoin q1\n", "role"),
        ("# vlab: solution\n", "question"),
        ("# vlab: solution 1q\n", "question"),
        ("x = 1\n### BEGIN SOLUTION\n", "role"),
    ],
)
def test_bad_cells_raise_errors_naming_the_field(source: str, field: str) -> None:
    with pytest.raises(VlabError) as info:
        cell_spec(code(source), 7)
    assert info.value.field is not None and info.value.field.startswith(f"cell 7 vlab.{field}")


def test_solution_region_becomes_indented_stub_naming_the_question() -> None:
    source = (
        "# vlab: solution q1\ndef f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    )
    stub = strip_solution(source, CellSpec("solution", "q1", title="Question 1"))
    assert stub == (
        "# vlab: solution q1\ndef f(x):\n    '''doc'''\n"
        "    raise NotImplementedError(\"Write your answer for q1 here (see 'Question 1' above)\")\n"
    )


def test_cell_without_markers_is_replaced_but_its_header() -> None:
    stub = strip_solution("# vlab: solution q4\nanswer = 42", CellSpec("solution", "q4"))
    assert stub.splitlines()[0] == "# vlab: solution q4"
    assert "42" not in stub and "NotImplementedError" in stub


@pytest.mark.parametrize(
    "source",
    ["### BEGIN SOLUTION\nx", "### END SOLUTION\n", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"],
)
def test_unbalanced_markers_are_errors(source: str) -> None:
    with pytest.raises(VlabError):
        strip_solution(source, CellSpec("solution", "q1"))


def test_defined_names_are_top_level_bindings_in_order() -> None:
    source = (
        "import os\nfrom math import sqrt as root\n%time x = 1\n"
        "def f():\n    inner = 1\nclass C: pass\na, b = 1, 2\n_private = 3"
    )
    assert defined_names(source) == ("os", "root", "f", "C", "a", "b")


def test_digest_ignores_trailing_whitespace_only() -> None:
    assert digest("a = 1  \nb = 2\n\n") == digest("a = 1\nb = 2")
    assert digest("a = 1\nb = 2") != digest("a = 1\nb = 3")


def test_lab_id_from_metadata_or_file_name() -> None:
    assert lab_id(Path("labs/source/07-migration.ipynb"), {}) == "07"
    assert lab_id(Path("x.ipynb"), {"metadata": {"vlab": {"lab": "12"}}}) == "12"
    with pytest.raises(VlabError):
        lab_id(Path("migration.ipynb"), {})
