"""The lab source format: which role each cell plays, and how a solution becomes a stub.

A source notebook is plain nbformat-4 JSON. A cell's role comes from its metadata
(``{"vlab": {"role": "solution", "question": "q1"}}``) or from a header comment on its first
line (``# vlab: solution q1``, ``<!-- vlab: readonly q2 -->`` in Markdown). This module only
*reads* cells; :mod:`vlab.grading.assign` writes the student notebook and the bundle.

The format is documented for lab authors in ``labs/README.md``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError

__all__ = [
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "LOCKED_ROLES",
    "ROLES",
    "Cell",
    "CellSpec",
    "Notebook",
    "cell_spec",
    "cell_source",
    "defined_names",
    "digest",
    "lab_id",
    "load_notebook",
    "notebook_text",
    "solution_stub",
    "strip_solution",
]

#: A notebook as parsed nbformat-4 JSON: raw, often untrusted (a submission), so read key by key, never typed.
Notebook = dict[str, Any]
#: One cell of a :data:`Notebook` (raw JSON, as above).
Cell = dict[str, Any]

#: Every role a cell may have (see ``labs/README.md``). ``release`` and ``questions`` cells are written by
#: ``vlab assign`` (who the copy is for; the question/points table).
ROLES = ("solution", "checks", "hidden", "readonly", "params", "omit", "release", "questions")
#: Roles whose cells are kept, checksummed and locked in the student notebook.
LOCKED_ROLES = ("checks", "readonly", "params")

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"

_QUESTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_CODE_HEADER_RE = re.compile(r"^\s*#\s*vlab:\s*(?P<body>.*)$")
_MD_HEADER_RE = re.compile(r"^\s*<!--\s*vlab:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class CellSpec:
    """What the source format says about one cell.

    :param role: one of :data:`ROLES`, or None for an ordinary cell.
    :param question: the question id the cell belongs to, if any.
    :param exports: names the cell exports explicitly (None: the role's default).
    :param title: how a stub names the question ("question q1" by default).
    """

    role: str | None = None
    question: str | None = None
    exports: tuple[str, ...] | None = None
    title: str | None = None

    @property
    def question_title(self) -> str:
        return self.title or f"question {self.question}"


def cell_source(cell: Cell) -> str:
    """The cell's source as one string (nbformat allows a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _header_fields(cell: Cell) -> dict[str, Any]:  # header key → str, number or list: read into CellSpec
    lines = cell_source(cell).split("\n", 1)
    pattern = _MD_HEADER_RE if cell.get("cell_type") == "markdown" else _CODE_HEADER_RE
    match = pattern.match(lines[0]) if lines else None
    if match is None:
        return {}
    words = shlex.split(match.group("body"))
    fields: dict[str, Any] = {}  # as above
    for word in words:
        if "=" in word:
            key, _, value = word.partition("=")
            fields[key] = value
        elif "role" not in fields:
            fields["role"] = word
        else:
            fields.setdefault("question", word)
    if isinstance(fields.get("exports"), str):
        fields["exports"] = [name for name in fields["exports"].split(",") if name]
    if isinstance(fields.get("title"), str):
        fields["title"] = fields["title"].replace("_", " ")
    return fields


def cell_spec(cell: Cell, index: int = 0) -> CellSpec:
    """Read a cell's role from its metadata, or else from its header comment.

    :raises VlabError: for an unknown role, a bad question id or a role that needs a question without one.
    """
    meta = cell.get("metadata", {}).get("vlab")
    fields = dict(meta) if isinstance(meta, dict) and meta.get("role") else _header_fields(cell)
    where = f"cell {index} vlab"
    role = fields.get("role")
    if role is not None and role not in ROLES:
        raise VlabError("unknown cell role", field=f"{where}.role", value=role, fix=f"use one of: {', '.join(ROLES)}")
    question = fields.get("question")
    if question is not None and not _QUESTION_RE.match(str(question)):
        raise VlabError(
            "a question id must be a short identifier",
            field=f"{where}.question",
            value=question,
            fix="use e.g. q1, q2b, boot_time",
        )
    if role == "solution" and question is None:
        raise VlabError(
            "a solution cell must name its question",
            field=f"{where}.question",
            fix='write the header as \'# vlab: solution q1\' or add "question": "q1" to the metadata',
        )
    if role is None and BEGIN_SOLUTION in cell_source(cell):
        raise VlabError(
            f"the cell has '{BEGIN_SOLUTION}' but no role",
            field=f"{where}.role",
            fix="start the cell with '# vlab: solution q1'",
        )
    exports = fields.get("exports")
    return CellSpec(
        role=role,
        question=str(question) if question is not None else None,
        exports=tuple(str(name) for name in exports) if exports is not None else None,
        title=fields.get("title"),
    )


def solution_stub(spec: CellSpec, indent: str = "") -> str:
    """The line that replaces a solution region."""
    message = f"Write your answer for {spec.question} here (see '{spec.question_title}' above)"
    return f"{indent}raise NotImplementedError({message!r})"


def strip_solution(source: str, spec: CellSpec, index: int = 0) -> str:
    """Replace the solution region(s) of a code cell by a stub.

    Without markers everything after the header comment is replaced.

    :raises VlabError: if the markers are unbalanced.
    """
    lines = source.split("\n")
    markers = [line.strip() for line in lines if line.strip().startswith((BEGIN_SOLUTION, END_SOLUTION))]
    if not markers:
        keep = lines[:1] if _CODE_HEADER_RE.match(lines[0]) else []
        return "\n".join([*keep, solution_stub(spec)])
    out: list[str] = []
    inside = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith(BEGIN_SOLUTION):
            if inside:
                raise VlabError(
                    f"nested '{BEGIN_SOLUTION}'",
                    field=f"cell {index} line {number}",
                    fix=f"close the region with '{END_SOLUTION}' first",
                )
            inside = True
            out.append(solution_stub(spec, line[: len(line) - len(line.lstrip())]))
        elif stripped.startswith(END_SOLUTION):
            if not inside:
                raise VlabError(
                    f"'{END_SOLUTION}' without '{BEGIN_SOLUTION}'",
                    field=f"cell {index} line {number}",
                    fix="remove it or open the region above it",
                )
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise VlabError(
            f"'{BEGIN_SOLUTION}' is never closed",
            field=f"cell {index}",
            fix=f"add '{END_SOLUTION}' after the solution",
        )
    return "\n".join(out)


def defined_names(source: str) -> tuple[str, ...]:
    """Names a cell binds at top level (functions, classes, assignments, imports), in order.

    IPython magics (lines starting with ``%`` or ``!``) are ignored; a cell that does not parse
    defines nothing.
    """
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ()
    names: list[str] = []
    for node in tree.body:
        for name in _bound_names(node):
            if name not in names and not name.startswith("_"):
                names.append(name)
    return tuple(names)


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name != "*"]
    return []


def digest(source: str) -> str:
    """Checksum of a cell's text that ignores trailing whitespace and trailing blank lines."""
    normal = "\n".join(line.rstrip() for line in source.replace("\r\n", "\n").split("\n")).strip("\n")
    return hashlib.sha256(normal.encode()).hexdigest()


def lab_id(path: Path, notebook: Notebook) -> str:
    """The lab id: notebook metadata ``vlab.lab``, else the digits that start the file name.

    :raises VlabError: if neither gives one.
    """
    meta = notebook.get("metadata", {}).get("vlab", {})
    if isinstance(meta, dict) and meta.get("lab"):
        return str(meta["lab"])
    match = re.match(r"^(\d+)", path.name)
    if match is None:
        raise VlabError(
            "cannot tell the lab id",
            field="notebook",
            value=str(path),
            fix="name the file NN-slug.ipynb or set metadata vlab.lab",
        )
    return match.group(1)


def load_notebook(path: Path) -> Notebook:
    """Read a notebook as plain JSON (no nbformat upgrade, so nothing random is added).

    :raises VlabError: if the file is not an nbformat-4 notebook.
    """
    try:
        notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VlabError("cannot read the notebook", field="notebook", value=str(path), detail=str(exc)) from exc
    if not isinstance(notebook, dict) or notebook.get("nbformat") != 4 or not isinstance(notebook.get("cells"), list):
        raise VlabError(
            "not an nbformat-4 notebook",
            field="notebook",
            value=str(path),
            fix="save it from JupyterLab (File → Save) and try again",
        )
    return notebook


def notebook_text(notebook: Notebook) -> str:
    """Serialise a notebook exactly as nbformat/JupyterLab do (stable bytes for staleness checks)."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
