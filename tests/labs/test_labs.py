"""Every lab, one parametrised suite: questions and points come from the source notebook itself.

The grading-design invariants of issue 14 (all points from hidden checks on the student's own instance,
public checks on the practice instance only, no answer visible, a generated questions table, practice
≠ any student's instance, every measurement a check reads taken by a locked cell) are strict xfails for the
labs in ``NOT_CONVERTED``: a lab leaves that set in the commit that converts it (see the checklist in
labs/README.md), and a strict xfail that starts passing fails the suite until it does.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vlab.grading.assign import build
from vlab.grading.format import cell_source, cell_spec, load_notebook
from vlab.grading.sandbox import THROWAWAY_UIDS
from vlab.grading.scan import scan_lab
from vlab.grading.seeds import practice_seed
from vlab.grading.testing import assert_lab_grades, assert_not_stale, student_params
from vlab.host import procfs

LABS_DIR = Path(__file__).resolve().parents[2] / "labs"
SOURCES = sorted((LABS_DIR / "source").glob("[0-9][0-9]-*.ipynb"))
LABS = {source.name[:2]: source for source in SOURCES}

#: Labs still on the old grading design. Remove yours when you convert it.
NOT_CONVERTED: set[str] = set()


def _param(lab: str, *, design: bool = False) -> Any:
    marks = []
    if design and lab in NOT_CONVERTED:
        marks.append(pytest.mark.xfail(strict=True, reason=f"lab {lab} is not converted to the issue-14 design"))
    return pytest.param(lab, marks=marks, id=f"lab{lab}")


ALL = [_param(lab) for lab in LABS]
DESIGN = [_param(lab, design=True) for lab in LABS]


def _no_lab_vm_left() -> None:
    """Lab 05 boots VMs alpha, beta and gamma (one of them only, unprivileged: grading as root runs the notebooks
    as a throw-away uid, so its rootless path is covered too); none may outlive the grading runs. Only the grader's
    uids are looked at: other test files, running beside this one, boot lab 05's VMs as root."""
    done = subprocess.run(["pgrep", "-af", "qemu-system.*-name (alpha|beta|gamma)"], capture_output=True, text=True)
    graded = [line for line in done.stdout.splitlines()
              if procfs.owner_uid(int(line.split()[0])) in THROWAWAY_UIDS]
    assert not graded, f"a lab VM outlived the grading runs: {graded}"


#: per-lab extras, checked after the grading runs of the 100 % / 0 % test (which they would otherwise repeat)
AFTER_GRADING = {"05": _no_lab_vm_left}


def _bundle(lab: str) -> dict[str, Any]:
    return build(LABS[lab]).bundle


def test_every_lab_is_found() -> None:
    assert len(LABS) >= 7 and all(lab.isdigit() for lab in LABS)
    assert set(LABS) >= NOT_CONVERTED


@pytest.mark.parametrize("lab", ALL)
def test_student_notebook_is_current(lab: str) -> None:
    assert_not_stale(LABS[lab])


@pytest.mark.parametrize("lab", ALL)
def test_a_released_copy_shows_the_parameters_the_grader_uses(lab: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What alice's own kernel prints (no grader environment) is what the grader computes for her."""
    for name in ("VLAB_STUDENT_ID", "JUPYTERHUB_USER"):
        monkeypatch.delenv(name, raising=False)
    copy = json.loads(build(LABS[lab], course="os-2026", released_for="alice").student_text)
    namespace: dict[str, Any] = {}
    for cell in copy["cells"]:
        if cell_spec(cell).role in ("release", "params"):
            exec(cell_source(cell), namespace)
    assert namespace["SETUP"].student == "alice"
    assert namespace["PARAMS"] == student_params(LABS[lab], "alice", "os-2026")
    assert namespace["PARAMS"] != student_params(LABS[lab], "alice")  # the course is part of the seed


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("lab", ALL)
def test_solution_scores_every_point_and_the_untouched_notebook_none(lab: str) -> None:
    bundle = _bundle(lab)
    solved, untouched = assert_lab_grades(LABS[lab])
    assert set(solved["questions"]) == set(bundle["questions"])
    for qid, info in bundle["questions"].items():
        assert solved["questions"][qid]["score"] == info["points"] > 0, qid
    blank = ("unanswered",) if lab not in NOT_CONVERTED else ("ok", "unanswered")  # old labs: stubs may not run
    assert untouched["total"] == 0 and untouched["status"] in blank, untouched["status"]
    if lab in AFTER_GRADING:
        AFTER_GRADING[lab]()


def _points_violations(bundle: dict[str, Any]) -> list[str]:
    found = [] if len(bundle["questions"]) >= 4 else ["fewer than 4 graded questions"]
    for qid, info in bundle["questions"].items():
        if info["public_points"]:
            found.append(f"{qid}: public checks score points (they run on the practice instance: give them points=0)")
        if not info["points"]:
            found.append(f"{qid}: no hidden check gives it points")
    return found


def _public_checks_reading_params(source: str) -> list[str]:
    """Check functions of a public check cell that use their ``params`` argument (the student's own instance)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and len(node.args.args) >= 2:
            name = node.args.args[1].arg
            used = any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))
            if used and any("check_for" in ast.unparse(d) for d in node.decorator_list):
                found.append(node.name)
    return found


def _instance_violations(lab: str, bundle: dict[str, Any]) -> list[str]:
    found = []
    if bundle["release_cell"] is None or "vlab.grading.setup(" not in (bundle["params_source"] or ""):
        return ["no release cell, or the params cell does not call vlab.grading.setup(...)"]
    for entry in bundle["check_sources"]:
        if not entry["hidden"]:
            found += [
                f"public check {n} reads params: use PRACTICE" for n in _public_checks_reading_params(entry["source"])
            ]
    namespace: dict[str, Any] = {}
    exec(bundle["params_source"], namespace)
    practice = namespace["params_for"](practice_seed(lab))
    same = [s for s in (f"student{n}" for n in range(30)) if student_params(LABS[lab], s) == practice]
    if same:
        found.append(f"the practice instance is also the instance of {same}: widen the parameter space")
    return found


def _table_violations(lab: str) -> list[str]:
    notebook = load_notebook(LABS[lab])
    roles = [cell_spec(c, i).role for i, c in enumerate(notebook["cells"])]
    text = "".join(cell_source(c) for c in notebook["cells"] if cell_spec(c).role != "questions")
    found = [] if "questions" in roles else ["no '<!-- vlab: questions -->' cell (vlab assign writes the table)"]
    return found + (["a hand-written points table"] if "| points |" in text else [])


def _top_level_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _unpinned_measurements(lab: str) -> list[str]:
    """Names checks read (``sub.x``) that neither the student's answer nor a locked cell provides: an ordinary
    cell exports them, so a later cell could replace the measurement (the grader pins only locked cells)."""
    answers: set[str] = set()
    locked: set[str] = set()
    read: dict[str, str] = {}
    for index, cell in enumerate(load_notebook(LABS[lab])["cells"]):
        spec = cell_spec(cell, index)
        if cell["cell_type"] != "code":
            continue
        source = cell_source(cell)
        if spec.role == "solution":
            answers |= set(spec.exports or ()) | _top_level_names(source)
        elif spec.role == "readonly":
            locked |= set(spec.exports or ()) | {n for n in _top_level_names(source) if not spec.exports}
        elif spec.role in ("checks", "hidden"):
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sub":
                    read.setdefault(node.attr, f"{spec.role} {spec.question}")
    return [f"{where} reads sub.{name}, which no solution or readonly cell exports: make the cell that measures "
            f"it '# vlab: readonly exports={name}'" for name, where in sorted(read.items())
            if name not in answers | locked]


@pytest.mark.parametrize("lab", DESIGN)
def test_grading_design(lab: str) -> None:
    """Issue 14: points only from hidden checks on the student's own instance; public checks on the practice
    instance; no answer visible; the questions table generated; practice is no student's instance."""
    bundle = _bundle(lab)
    found = _points_violations(bundle) + _instance_violations(lab, bundle) + _table_violations(lab)
    found += _unpinned_measurements(lab)
    found += [f"answer visible: {leak}" for leak in scan_lab(LABS[lab])]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("lab", ALL)
def test_solution_notebook_has_no_outputs(lab: str) -> None:
    for path in (LABS[lab], LABS_DIR / LABS[lab].name):
        cells = json.loads(path.read_text())["cells"]
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), path
