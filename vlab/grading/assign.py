"""``vlab assign``: one source notebook → the student notebook and the autograder bundle.

:func:`build` is pure (source in, two texts out) and deterministic, which is what makes
:func:`is_stale` possible: regenerate in memory, compare with the files on disk.
:func:`assign` writes both files atomically (temp file + rename; the bundle with mode 0600).

The bundle (``labs/autograder/NN.json``) holds what grading needs and students must not see:
the sources of the public and hidden check cells and of the ``params`` cell, the list of checks
with their points, the checksums of read-only cells, the exported names and the limits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.grading.checks import Registry
from vlab.grading.format import (
    LOCKED_ROLES,
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


@dataclass(frozen=True)
class Assignment:
    """The generated files of one lab (texts, and where they belong)."""

    lab: str
    source: Path
    student_path: Path
    bundle_path: Path
    student_text: str
    bundle_text: str

    @property
    def bundle(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.bundle_text)
        return result


def student_path_for(source: Path, out_dir: Path | None = None) -> Path:
    """``labs/source/NN-x.ipynb`` → ``labs/NN-x.ipynb`` (or ``out_dir/NN-x.ipynb``)."""
    source = Path(source)
    return (Path(out_dir) if out_dir else source.resolve().parent.parent) / source.name


def bundle_path_for(lab: str, out_dir: Path) -> Path:
    """Where the bundle of ``lab`` goes: ``out_dir/autograder/NN.json``."""
    return Path(out_dir) / "autograder" / f"{lab}.json"


def cell_ids(cells: list[dict[str, Any]]) -> list[str]:
    """Each cell's id; a cell without one gets a deterministic id from its position and text."""
    ids: list[str] = []
    for index, cell in enumerate(cells):
        cid = cell.get("id") or "c" + hashlib.sha256(f"{index}\n{cell_source(cell)}".encode()).hexdigest()[:10]
        while cid in ids:  # nbformat requires unique ids
            cid = cid + "x"
        ids.append(str(cid))
    return ids


def _student_cell(cell: dict[str, Any], spec: CellSpec, cid: str, index: int) -> dict[str, Any]:
    out = copy.deepcopy(cell)
    out["id"] = cid
    source = cell_source(cell)
    if spec.role == "solution":
        if cell.get("cell_type") == "code":
            source = strip_solution(source, spec, index)
        else:
            source = f"_Write your answer for {spec.question} here._"
    out["source"] = source
    meta = out.setdefault("metadata", {})
    for key in ("vlab", "editable", "deletable", "collapsed", "scrolled", "execution"):
        meta.pop(key, None)
    if spec.role:
        meta["vlab"] = {"role": spec.role, **({"question": spec.question} if spec.question else {})}
    if spec.role in LOCKED_ROLES:
        meta["editable"] = False
        meta["deletable"] = False
    if out.get("cell_type") == "code":
        out["outputs"] = []
        out["execution_count"] = None
    return out


def check_namespace() -> dict[str, Any]:
    """Globals for running a lab's cells outside the notebook: ``vlab`` (with ``vlab.grading``) imported.

    The ``params`` cell and then the check cells run in order in one such namespace, as in the notebook.
    """
    import vlab
    import vlab.grading

    return {"__name__": "vlab_checks", "vlab": vlab}


def _collect_checks(sources: list[dict[str, Any]], lab: str, params_source: str | None) -> list[dict[str, Any]]:
    """Run the params cell and the check cells' definitions (``vlab.check`` does nothing meanwhile),
    in one namespace as in the notebook, to list the checks and their points."""
    found: list[dict[str, Any]] = []
    namespace = check_namespace()
    namespace["STUDENT_ID"] = "self-study"
    if params_source:
        try:
            exec(compile(params_source, f"<lab {lab} params>", "exec"), namespace)
        except Exception as exc:
            raise VlabError(
                "the params cell fails when it runs outside the notebook",
                field="params cell",
                detail=f"{type(exc).__name__}: {exc}",
                fix="it may use only STUDENT_ID and what it imports itself",
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
        for one in registry.checks:
            found.append({"question": one.question, "name": one.name, "points": one.points, "hidden": one.hidden})
    return found


def build(source: Path | str, out_dir: Path | str | None = None) -> Assignment:
    """Generate the student notebook and the bundle of ``source`` in memory.

    :raises VlabError: if the source is not a valid lab (see ``labs/README.md``).
    """
    source = Path(source)
    notebook = load_notebook(source)
    lab = lab_id(source, notebook)
    student_path = student_path_for(source, Path(out_dir) if out_dir else None)
    cells: list[dict[str, Any]] = notebook["cells"]
    ids = cell_ids(cells)
    meta = notebook.get("metadata", {}).get("vlab", {}) or {}

    student_cells: list[dict[str, Any]] = []
    questions: dict[str, dict[str, Any]] = {}
    exports: list[str] = list(meta.get("exports", []))
    check_sources: list[dict[str, Any]] = []
    readonly: list[dict[str, Any]] = []
    params_source: str | None = None

    for index, (cell, cid) in enumerate(zip(cells, ids, strict=True)):
        spec = cell_spec(cell, index)
        text = cell_source(cell)
        if spec.question:
            questions.setdefault(spec.question, {"title": spec.question_title})
        names = spec.exports
        if names is None and spec.role == "solution" and cell.get("cell_type") == "code":
            names = defined_names(text)
        exports.extend(n for n in names or () if n not in exports)
        if spec.role in ("checks", "hidden"):
            check_sources.append(
                {"cell": cid, "question": spec.question, "hidden": spec.role == "hidden", "source": text}
            )
        if spec.role == "params":
            params_source = (params_source + "\n\n" if params_source else "") + text
        if spec.role in LOCKED_ROLES:
            readonly.append({"cell": cid, "question": spec.question, "sha256": digest(text)})
        if spec.role not in ("hidden", "omit"):
            student_cells.append(_student_cell(cell, spec, cid, index))

    checks = _collect_checks(check_sources, lab, params_source)
    for one in checks:
        questions.setdefault(one["question"], {"title": f"question {one['question']}"})
    for qid, info in questions.items():
        info["points"] = sum(c["points"] for c in checks if c["question"] == qid)

    student = {key: value for key, value in notebook.items() if key != "cells"}
    student["metadata"] = copy.deepcopy(notebook.get("metadata", {}))
    student["metadata"]["vlab"] = {"lab": lab}
    student["nbformat_minor"] = max(int(notebook.get("nbformat_minor", 5)), 5)  # cell ids need 4.5
    student["cells"] = student_cells
    student_text = notebook_text(student)

    bundle = {
        "format": BUNDLE_FORMAT,
        "lab": lab,
        "source_name": source.name,
        "student_sha256": hashlib.sha256(student_text.encode()).hexdigest(),
        "limits": {**DEFAULT_LIMITS, **meta.get("limits", {})},
        "questions": questions,
        "exports": exports,
        "checks": checks,
        "check_sources": check_sources,
        "params_source": params_source,
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def assign(source: Path | str, out_dir: Path | str | None = None) -> Assignment:
    """Write the student notebook and the bundle of ``source`` (atomically; the bundle mode 0600)."""
    result = build(source, out_dir)
    _write_atomic(result.student_path, result.student_text, 0o644)
    _write_atomic(result.bundle_path, result.bundle_text, 0o600)
    return result


def is_stale(source: Path | str, out_dir: Path | str | None = None) -> bool:
    """True if the student notebook of ``source`` is missing or differs from what ``vlab assign`` writes."""
    result = build(source, out_dir)
    try:
        return result.student_path.read_text(encoding="utf-8") != result.student_text
    except FileNotFoundError:
        return True
