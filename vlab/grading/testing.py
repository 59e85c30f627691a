"""Helpers for the labs' own tests (see "Testing a lab" in ``labs/README.md``).

* :func:`assert_not_stale` — the committed student notebook is what ``vlab assign`` writes.
* :func:`assert_lab_grades` — grading the source notebook (the solution) gives full marks and
  status ``ok``; grading the generated student notebook gives 0 and nothing worse than
  ``unanswered``. Both run through the real sandbox.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlab.grading.assign import build, cell_ids, check_namespace, release_source
from vlab.grading.bundle import Bundle
from vlab.grading.checks import Check, CheckResult, Exports, Registry, run_checks
from vlab.grading.format import cell_spec, load_notebook, notebook_text
from vlab.grading.results import SubmissionResult
from vlab.grading.runner import grade_all
from vlab.grading.sandbox import Job, grade_submission
from vlab.grading.seeds import DEFAULT_COURSE, seed_for

__all__ = [
    "assert_lab_grades",
    "assert_not_stale",
    "grade_notebook",
    "lab_checks",
    "locked_helpers",
    "run_check",
    "solution_notebook_text",
    "student_params",
]


def assert_not_stale(source: Path | str, out_dir: Path | str | None = None) -> None:
    """Fail if the student notebook of ``source`` is missing or differs from ``vlab assign``'s output."""
    result = build(source, out_dir)
    try:
        current = result.student_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current != result.student_text:
        state = "missing" if current is None else "stale"
        raise AssertionError(f"{result.student_path} is {state}: run `vlab assign {source}` and commit it")


def solution_notebook_text(source: Path | str) -> str:
    """The source notebook as a submission: the cell ids and the release cell ``vlab assign`` writes."""
    notebook = load_notebook(Path(source))
    for index, (cell, cid) in enumerate(zip(notebook["cells"], cell_ids(notebook["cells"]), strict=True)):
        cell["id"] = cid
        if cell_spec(cell, index).role == "release":
            cell["source"] = release_source()
    notebook["nbformat_minor"] = max(int(notebook.get("nbformat_minor", 5)), 5)
    return notebook_text(notebook)


def _grade(notebook: Path, bundle: Bundle, student: str) -> SubmissionResult:
    return grade_submission(Job(str(notebook), student, bundle))


# The public helpers return results and bundles as their JSON form: the labs' tests index them like result.json.
def grade_notebook(notebook: Path | str, bundle: dict[str, Any], student: str = "test-student") -> dict[str, Any]:
    """Grade one notebook against ``bundle`` (its JSON form) in the real sandbox; returns the result's JSON form."""
    return _grade(Path(notebook), Bundle.from_dict(bundle), student).to_dict()


def assert_lab_grades(source: Path | str, student: str = "test-student") -> tuple[dict[str, Any], dict[str, Any]]:
    """Solution → full marks with status ``ok``; student version → 0 without errors.

    :returns: the two results (solution, student) as JSON, for further assertions.
    """
    assignment = build(source)
    bundle = Bundle.from_dict(assignment.bundle)
    with tempfile.TemporaryDirectory(prefix="vlab-labtest-") as tmp:
        solution = Path(tmp) / "solution.ipynb"
        solution.write_text(solution_notebook_text(source), encoding="utf-8")
        student_nb = Path(tmp) / "student.ipynb"
        student_nb.write_text(assignment.student_text, encoding="utf-8")
        # both at once: the untouched notebook mostly waits (its answers raise at once), so the pair takes
        # about as long as the solution alone
        solved, untouched = grade_all([Job(str(solution), student, bundle), Job(str(student_nb), student, bundle)],
                                      workers=2, progress=False)
    failed = [f"{c.name}: {c.message}" for c in solved.checks if not c.passed]
    if solved.status != "ok" or solved.total != solved.max:
        raise AssertionError(
            f"the solution of {source} scores {solved.total:g}/{solved.max:g} ({solved.status}); "
            f"failed checks: {failed}; cell errors: {_errors(solved)}; notes: {solved.notes}"
        )
    if untouched.total != 0 or untouched.status not in ("ok", "unanswered"):
        raise AssertionError(
            f"the student version of {source} scores {untouched.total:g} ({untouched.status}); "
            f"cell errors: {_errors(untouched)}; notes: {untouched.notes}"
        )
    return solved.to_dict(), untouched.to_dict()


def _errors(result: SubmissionResult) -> str:
    return json.dumps(result.to_dict()["cell_errors"])


def lab_checks(source: Path | str, student: str = "test-student") -> tuple[dict[str, Any], dict[str, Check]]:
    """The params cell and check cells of ``source``'s bundle, run as the grader runs them: (their namespace, the
    checks by name) — to test one check against chosen answers without grading a whole notebook."""
    bundle = Bundle.from_dict(build(Path(source)).bundle)
    namespace = check_namespace()  # exec globals: any value
    exec(bundle.params_source or "", namespace)
    found: dict[str, Check] = {}
    for entry in bundle.check_sources:
        with Registry(hidden=entry.hidden) as registry:
            exec(entry.source, namespace)
        found.update({check.name: check for check in registry.checks})
    return namespace, found


def locked_helpers(source: Path | str, defines: str, **namespace: Any) -> dict[str, Any]:  # exec globals
    """Run the read-only cell of ``source`` that defines function ``defines`` (a helper checks call, like
    lab 02's ``drive``) in ``namespace`` (the lab module as ``lab``, the student's answers); its namespace after.

    Checks call such helpers as ``sub.NAME``: pass them to :func:`run_check` to test a check on chosen answers."""
    for index, cell in enumerate(load_notebook(Path(source))["cells"]):
        text = "".join(cell["source"])
        if cell_spec(cell, index).role == "readonly" and f"def {defines}(" in text:
            exec(text, namespace)
            return namespace
    raise KeyError(f"no read-only cell of {source} defines {defines}()")


def solution_answers(source: Path | str, namespace: dict[str, Any], *, readonly: Callable[[str], bool] | None = None,
                     replace: Mapping[str, tuple[str, str]] | None = None) -> dict[str, Any]:  # exec globals
    """Run ``source``'s solution cells, then the read-only cells ``readonly(text)`` selects, in ``namespace``;
    ``replace[question] = (old, new)`` edits a question's solution first (a student's variant). Returns the
    names a grader's exports would hold: pass them to :func:`run_check` to test a check on that variant."""
    edits = dict(replace or {})
    for index, cell in enumerate(load_notebook(Path(source))["cells"]):
        spec, text = cell_spec(cell, index), "".join(cell["source"])
        if spec.role == "solution" and spec.question in edits:
            old, new = edits.pop(spec.question)
            assert old in text, f"{old!r} is not in the solution of {spec.question}"
            text = text.replace(old, new)
        if spec.role == "solution" or (spec.role == "readonly" and readonly is not None and readonly(text)):
            exec(text, namespace)
    assert not edits, f"no solution cell for {sorted(edits)}"
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def student_params(source: Path | str, student: str, course: str = DEFAULT_COURSE) -> dict[str, Any]:  # any values
    """The parameters the grader computes for ``student``: the bundle's ``params_for`` on their seed."""
    bundle = Bundle.from_dict(build(Path(source), course=course).bundle)
    namespace = check_namespace()
    exec(bundle.params_source or "", namespace)
    return dict(namespace["params_for"](seed_for(student, bundle.lab, course)))


def run_check(check: Check, params: dict[str, Any], **answers: Any) -> CheckResult:  # params: any values
    """Run one check on ``answers`` (the names a student's notebook would export)."""
    return run_checks([check], Exports(answers), params)[0]
