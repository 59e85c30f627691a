"""``vlab assign``: one source notebook → the student notebook and the autograder bundle.

:func:`build` is pure (source in, two texts out) and deterministic, which is what makes
:func:`is_stale` possible: regenerate in memory, compare with the files on disk.
:func:`assign` writes both files atomically (temp file + rename; the bundle with mode 0600), and
with a roster one released notebook per student (``release/<student>/NN-x.ipynb``).

The bundle (``labs/autograder/NN.json``) holds what grading needs and students must not see:
the sources of the public and hidden check cells and of the ``params`` cell (after the release
cell's ``COURSE``), the course, the list of checks with their points, the checksums of read-only
cells, the exported names and the limits.

Two cells are written here rather than copied: the ``release`` cell (``COURSE`` and
``RELEASED_FOR``: who this copy is for; locked, not checksummed, since it differs per student)
and the ``questions`` cell (the question/points table, from the checks themselves).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.files import write_atomic
from vlab.grading.checks import Check, Registry
from vlab.grading.format import (
    LOCKED_ROLES,
    Cell,
    CellSpec,
    cell_source,
    cell_spec,
    defined_names,
    digest,
    lab_id,
    load_notebook,
    notebook_text,
    strip_solution,
)
from vlab.grading.seeds import DEFAULT_COURSE, seed_for, valid_student_id

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_LIMITS",
    "Assignment",
    "assign",
    "build",
    "check_namespace",
    "bundle_path_for",
    "cell_ids",
    "is_stale",
    "questions_table",
    "release_path_for",
    "release_source",
    "student_path_for",
]

BUNDLE_FORMAT = "vlab-autograder/1"

#: Grading limits unless the notebook's metadata ``vlab.limits`` says otherwise.
DEFAULT_LIMITS: dict[str, float] = {
    "cell_timeout": 60,
    "notebook_timeout": 600,
    "memory_mb": 4096,
    "address_space_mb": 32768,  # QEMU and Unicorn reserve ~1 GiB of address space per JIT
    "processes": 256,
    "cpu_percent": 100,
    "call_timeout": 5,
}


#: Locked in the student notebook but not checksummed: ``vlab assign`` writes them, per course or student.
_GENERATED_ROLES = ("release", "questions")


@dataclass(frozen=True)
class Assignment:
    """The generated files of one lab (texts, and where they belong).

    :param released: student id → path of the notebook released for them (``assign(..., roster=...)``).
    """

    lab: str
    source: Path
    student_path: Path
    bundle_path: Path
    student_text: str
    bundle_text: str
    released: tuple[tuple[str, Path], ...] = ()

    @property
    def bundle(self) -> dict[str, Any]:  # the file's JSON, as lab tests read it (Bundle.from_dict types it)
        """The bundle as parsed JSON (what ``labs/autograder/NN.json`` holds)."""
        result: dict[str, Any] = json.loads(self.bundle_text)
        return result


def student_path_for(source: Path, out_dir: Path | None = None) -> Path:
    """``labs/source/NN-x.ipynb`` → ``labs/NN-x.ipynb`` (or ``out_dir/NN-x.ipynb``)."""
    source = Path(source)
    return (Path(out_dir) if out_dir else source.resolve().parent.parent) / source.name


def release_path_for(student_path: Path, student: str) -> Path:
    """Where the notebook released for ``student`` goes: ``<student notebooks>/release/<student>/NN-x.ipynb``."""
    return student_path.parent / "release" / student / student_path.name


def bundle_path_for(lab: str, out_dir: Path) -> Path:
    """Where the bundle of ``lab`` goes: ``out_dir/autograder/NN.json``."""
    return Path(out_dir) / "autograder" / f"{lab}.json"


def cell_ids(cells: list[Cell]) -> list[str]:
    """Each cell's id; a cell without one gets a deterministic id from its position and text."""
    ids: list[str] = []
    for index, cell in enumerate(cells):
        cid = cell.get("id") or "c" + hashlib.sha256(f"{index}\n{cell_source(cell)}".encode()).hexdigest()[:10]
        while cid in ids:  # nbformat requires unique ids
            cid = cid + "x"
        ids.append(str(cid))
    return ids


def _student_cell(cell: Cell, spec: CellSpec, cid: str, index: int) -> Cell:
    out = copy.deepcopy(cell)
    out["id"] = cid
    source = cell_source(cell)
    if spec.role == "solution":
        if cell.get("cell_type") == "code":
            source = strip_solution(source, spec, index)
            if any(line.startswith("raise NotImplementedError(") for line in source.split("\n")):
                # a top-level stub raises when run: "Run All" in JupyterLab and nbval carry on past it
                tags = out.setdefault("metadata", {}).setdefault("tags", [])
                if "raises-exception" not in tags:
                    tags.append("raises-exception")
        else:
            source = f"_Write your answer for {spec.question} here._"
    out["source"] = source
    meta = out.setdefault("metadata", {})
    for key in ("vlab", "editable", "deletable", "collapsed", "scrolled", "execution"):
        meta.pop(key, None)
    if spec.role:
        meta["vlab"] = {"role": spec.role, **({"question": spec.question} if spec.question else {})}
    if spec.role in LOCKED_ROLES or spec.role in _GENERATED_ROLES:
        meta["editable"] = False
        meta["deletable"] = False
    if out.get("cell_type") == "code":
        out["outputs"] = []
        out["execution_count"] = None
    return out


def check_namespace() -> dict[str, Any]:  # a Python namespace (exec globals): any value
    """Globals for running a lab's cells outside the notebook: ``vlab`` (with ``vlab.grading``) imported.

    The ``params`` cell and then the check cells run in order in one such namespace, as in the notebook.
    """
    import vlab
    import vlab.grading

    return {"__name__": "vlab_checks", "vlab": vlab}


def release_source(course: str = DEFAULT_COURSE, released_for: str | None = None) -> str:
    """The text of the release cell: whom this copy of the notebook is for (read by the ``params`` cell)."""
    return "\n".join(
        [
            "# vlab: release",
            "# Written by `vlab assign`: whom this copy is for (the params cell reads it). Do not edit.",
            f"COURSE = {json.dumps(course)}",
            f"RELEASED_FOR = {'None' if released_for is None else json.dumps(released_for)}",
        ]
    )


_HEADING_RE = r"^#+\s.*?\bQuestion\s+{q}\b\s*[—–:-]+\s*(?P<title>.+?)\s*$"


def _question_titles(cells: list[Cell], questions: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each question's title: the Markdown heading ``## … Question q1 — <title>``, else its ``title=``."""
    titles = {qid: str(info.get("title", "")) for qid, info in questions.items()}
    text = "\n".join(cell_source(c) for c in cells if c.get("cell_type") == "markdown")
    for qid in questions:
        match = re.search(_HEADING_RE.format(q=re.escape(qid)), text, re.MULTILINE)
        if match:
            titles[qid] = match.group("title")
    return titles


def questions_table(questions: dict[str, dict[str, Any]]) -> str:  # the bundle's JSON "questions"
    """The Markdown of the ``questions`` cell: one row per question with its title and graded points."""
    lines = [
        "<!-- vlab: questions -->",
        "| question | what you do | points |",
        "|---|---|---|",
    ]
    for qid, info in questions.items():
        lines.append(f"| {qid} | {str(info['title']).replace('|', '/')} | {info['points']:g} |")
    total = sum(float(info["points"]) for info in questions.values())
    lines += [
        f"| | **total** | **{total:g}** |",
        "",
        "Points come from hidden checks that run when your notebook is graded, on **your own instance** "
        "(`PARAMS`, printed below: the grader uses exactly these). The public checks (`vlab.check`) run on "
        "the **practice instance** (`PRACTICE`), score 0 points and show you whether your code works; they "
        "never show an answer of yours.",
    ]
    return "\n".join(lines)


def _collect_checks(sources: list[dict[str, Any]], lab: str, params_source: str | None) -> list[Check]:
    """Run the params cell and the check cells' definitions (``vlab.check`` does nothing meanwhile),
    in one namespace as in the notebook, to list the checks and their points."""
    found: list[Check] = []
    namespace = check_namespace()
    if params_source:
        try:
            exec(compile(params_source, f"<lab {lab} params>", "exec"), namespace)
        except Exception as exc:
            raise VlabError(
                "the params cell fails when it runs outside the notebook",
                field="params cell",
                detail=f"{type(exc).__name__}: {exc}",
                fix="it may use only COURSE and RELEASED_FOR (the release cell) and what it imports itself",
            ) from exc
    for entry in sources:
        with Registry(hidden=entry["hidden"]) as registry:
            try:
                exec(compile(entry["source"], f"<lab {lab} cell {entry['cell']}>", "exec"), namespace)
            except Exception as exc:
                raise VlabError(
                    "a check cell fails when its definitions run",
                    field=f"cell {entry['cell']}",
                    detail=f"{type(exc).__name__}: {exc}",
                    fix="check cells should only import and define checks (and call vlab.check)",
                ) from exc
        found.extend(registry.checks)
    return found


def _course(course: str) -> str:
    seed_for("x", "x", course)  # validates it (VlabError naming the field)
    return course


def build(
    source: Path | str,
    out_dir: Path | str | None = None,
    *,
    course: str = DEFAULT_COURSE,
    released_for: str | None = None,
) -> Assignment:
    """Generate the student notebook and the bundle of ``source`` in memory.

    :param course: written into the release cell (``COURSE``) and the bundle (``course``).
    :param released_for: the student this copy is for (``RELEASED_FOR``); None for the repository's copy.
    :raises VlabError: if the source is not a valid lab (see ``labs/README.md``).
    """
    source = Path(source)
    course = _course(course)
    if released_for is not None and not valid_student_id(released_for):
        raise VlabError("not a valid student id", field="roster", value=released_for, fix="use [A-Za-z0-9.@+-]")
    notebook = load_notebook(source)
    lab = lab_id(source, notebook)
    student_path = student_path_for(source, Path(out_dir) if out_dir else None)
    cells: list[Cell] = notebook["cells"]
    ids = cell_ids(cells)
    meta = notebook.get("metadata", {}).get("vlab", {}) or {}

    student_cells: list[Cell] = []
    # the bundle's JSON parts, built here and written once (bundle.py types them when the grader reads them;
    # it imports this module, so its records cannot be used here)
    questions: dict[str, dict[str, Any]] = {}
    exports: list[str] = list(meta.get("exports", []))
    check_sources: list[dict[str, Any]] = []
    readonly: list[dict[str, Any]] = []
    params_source: str | None = None
    release_cell: str | None = None
    questions_cell: Cell | None = None

    for index, (cell, cid) in enumerate(zip(cells, ids, strict=True)):
        spec = cell_spec(cell, index)
        text = cell_source(cell)
        if spec.question:
            questions.setdefault(spec.question, {"title": spec.title or ""})
        names = spec.exports
        if names is None and spec.role == "solution" and cell.get("cell_type") == "code":
            names = defined_names(text)
        exports.extend(n for n in names or () if n not in exports)
        if spec.role in ("checks", "hidden"):
            check_sources.append(
                {"cell": cid, "question": spec.question, "hidden": spec.role == "hidden", "source": text}
            )
        if spec.role == "release":
            if release_cell is not None or cell.get("cell_type") != "code" or params_source is not None:
                raise VlabError(
                    "a lab has at most one release cell, a code cell before the params cell",
                    field=f"cell {index} vlab.role",
                    value="release",
                    fix="keep one '# vlab: release' code cell above '# vlab: params'",
                )
            release_cell = cid
            cell = {**cell, "source": release_source(course, released_for)}
        if spec.role == "params":
            params_source = (params_source + "\n\n" if params_source else "") + text
        if spec.role in LOCKED_ROLES:
            readonly.append({"cell": cid, "question": spec.question, "sha256": digest(text)})
        if spec.role not in ("hidden", "omit"):
            student_cells.append(_student_cell(cell, spec, cid, index))
            if spec.role == "questions":
                if cell.get("cell_type") != "markdown":
                    raise VlabError(
                        "the questions cell must be Markdown",
                        field=f"cell {index} vlab.role",
                        value="questions",
                        fix="start a Markdown cell with '<!-- vlab: questions -->'",
                    )
                questions_cell = student_cells[-1]

    if release_cell is not None and params_source is not None:
        # the grader runs the params cell on its own: it gets the course, never a student's RELEASED_FOR
        params_source = release_source(course) + "\n\n" + params_source
    checks = _collect_checks(check_sources, lab, params_source)
    for one in checks:
        questions.setdefault(one.question, {"title": ""})
    for qid, info in questions.items():
        info["points"] = sum(c.points for c in checks if c.question == qid)
        info["public_points"] = sum(c.points for c in checks if c.question == qid and not c.hidden)
    for qid, title in _question_titles(cells, questions).items():
        questions[qid]["title"] = title or f"question {qid}"
    if questions_cell is not None:
        questions_cell["source"] = questions_table(questions)

    student = {key: value for key, value in notebook.items() if key != "cells"}
    student["metadata"] = copy.deepcopy(notebook.get("metadata", {}))
    student["metadata"]["vlab"] = {"lab": lab}
    student["nbformat_minor"] = max(int(notebook.get("nbformat_minor", 5)), 5)  # cell ids need 4.5
    student["cells"] = student_cells
    student_text = notebook_text(student)

    bundle = {
        "format": BUNDLE_FORMAT,
        "lab": lab,
        "course": course,
        "source_name": source.name,
        "student_sha256": hashlib.sha256(student_text.encode()).hexdigest(),
        "limits": {**DEFAULT_LIMITS, **meta.get("limits", {})},
        "questions": questions,
        "exports": exports,
        "checks": [{"question": c.question, "name": c.name, "points": c.points, "hidden": c.hidden} for c in checks],
        "check_sources": check_sources,
        "params_source": params_source,
        "release_cell": release_cell,
        "readonly": readonly,
    }
    bundle_text = json.dumps(bundle, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return Assignment(
        lab=lab,
        source=source,
        student_path=student_path,
        bundle_path=bundle_path_for(lab, student_path.parent),
        student_text=student_text,
        bundle_text=bundle_text,
    )


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode)


def _roster(students: list[str]) -> list[str]:
    seen: set[str] = set()
    for number, student in enumerate(students, start=1):
        if not valid_student_id(student):
            raise VlabError(
                "not a valid student id",
                field=f"roster line {number}",
                value=student,
                fix="one id per line, letters, digits and . @ + - only",
            )
        if student in seen:
            raise VlabError("a student is listed twice", field=f"roster line {number}", value=student)
        seen.add(student)
    return list(students)


def _released_text(result: Assignment, course: str, student: str) -> str:
    """The student notebook with its release cell naming ``student``."""
    cell_id = result.bundle.get("release_cell")
    if cell_id is None:
        raise VlabError(
            "the lab has no release cell, so a released copy could not tell whom it is for",
            field="roster",
            value=str(result.source),
            fix="add a code cell '# vlab: release' above the params cell (see labs/README.md)",
        )
    notebook = json.loads(result.student_text)
    for cell in notebook["cells"]:
        if cell.get("id") == cell_id:
            cell["source"] = release_source(course, student)
    return notebook_text(notebook)


def assign(
    source: Path | str,
    out_dir: Path | str | None = None,
    *,
    course: str = DEFAULT_COURSE,
    roster: list[str] | None = None,
) -> Assignment:
    """Write the student notebook and the bundle of ``source`` (atomically; the bundle mode 0600).

    :param course: the course (``COURSE`` in every copy, ``course`` in the bundle).
    :param roster: student ids: each gets ``release/<student>/NN-x.ipynb``, a copy that knows who it is for,
        so it shows the student exactly the parameters the grader will use.
    :raises VlabError: for a bad course or roster entry (nothing is written then).
    """
    students = _roster(roster or [])
    result = build(source, out_dir, course=course)
    released = [(s, _released_text(result, course, s)) for s in students]
    _write_atomic(result.student_path, result.student_text, 0o644)
    _write_atomic(result.bundle_path, result.bundle_text, 0o600)
    paths = []
    for student, text in released:
        path = release_path_for(result.student_path, student)
        _write_atomic(path, text, 0o644)
        paths.append((student, path))
    return Assignment(
        lab=result.lab,
        source=result.source,
        student_path=result.student_path,
        bundle_path=result.bundle_path,
        student_text=result.student_text,
        bundle_text=result.bundle_text,
        released=tuple(paths),
    )


def is_stale(source: Path | str, out_dir: Path | str | None = None, *, course: str = DEFAULT_COURSE) -> bool:
    """True if the student notebook of ``source`` is missing or differs from what ``vlab assign`` writes."""
    result = build(source, out_dir, course=course)
    try:
        return result.student_path.read_text(encoding="utf-8") != result.student_text
    except FileNotFoundError:
        return True
