"""Find a lab's answers in what its students can see.

:func:`answer_literals` lists the constant answers of a source notebook's solutions (a solution
region that returns or assigns a literal: ``return "b"``, ``order_matters = False``,
``answer = {"c", "d"}``). :func:`scan` looks for each of them in the cells of a student
notebook, and in the source of the ``vlab.labs`` modules those cells import (the student's copy of
vlab):

* in code, as an operand of a comparison (``answer == "b"``, ``x is False``, ``x in {"c", "d"}``)
  or an argument of ``expect*``/``assert*``/``fail`` — a check that gives the answer away;
* in code, anywhere, if it is *distinctive*: a string of 3 or more characters, or a tuple/set/list;
* in Markdown, a distinctive string as a whole word or phrase;
* in code, any use of ``hashlib`` (a hash of a small answer space is brute-forced at once).

Computed answers (a function with logic) have no literal and cannot leak this way; hidden checks
and instance-dependent answers are what protect them.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.grading.format import BEGIN_SOLUTION, END_SOLUTION, Notebook, cell_source, cell_spec, load_notebook

__all__ = ["AnswerLiteral", "Leak", "answer_literals", "scan", "scan_lab"]


@dataclass(frozen=True)
class AnswerLiteral:
    """A constant answer of a solution: ``value``, for ``question``."""

    question: str
    value: Any

    @property
    def distinctive(self) -> bool:
        """Unlikely to appear by chance: a string of ≥ 3 characters, or a collection."""
        if isinstance(self.value, str):
            return len(self.value.strip()) >= 3
        return isinstance(self.value, tuple | frozenset | list)


@dataclass(frozen=True)
class Leak:
    """Where a student can see an answer (or a hash)."""

    question: str
    value: Any
    where: str
    how: str

    def __str__(self) -> str:
        return f"{self.question}: {self.value!r} visible in {self.where} ({self.how})"


_MAGIC = re.compile(r"^\s*(%|!(?!=))")  # an IPython magic or shell escape, not a continued `!= x`


def _code(source: str) -> ast.Module | None:
    text = "\n".join("" if _MAGIC.match(line) else line for line in source.split("\n"))
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


def _solution_regions(source: str) -> str:
    lines = source.split("\n")
    if not any(line.strip().startswith(BEGIN_SOLUTION) for line in lines):
        return "\n".join(lines[1:] if lines and lines[0].lstrip().startswith("#") else lines)
    out, inside, indent = [], False, 0
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(BEGIN_SOLUTION):
            inside, indent = True, len(line) - len(line.lstrip())
        elif stripped.startswith(END_SOLUTION):
            inside = False
            out.append("")
        elif inside:
            out.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
    return "\n".join(out)


def _literal(node: ast.AST | None) -> tuple[bool, Any]:
    """(True, value) if ``node`` is a constant expression (sets become frozensets), else (False, None)."""
    if node is None:
        return False, None
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None
    if value is None or isinstance(value, dict):
        return False, None
    return True, _normal(value)


def _normal(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return frozenset(_normal(v) for v in value)
    if isinstance(value, list):
        return tuple(_normal(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_normal(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (``True`` is not ``1``; ``"B"`` matches ``"b"``)."""
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    try:
        return bool(type(a) is type(b) or {type(a), type(b)} <= {int, float}) and bool(a == b)
    except Exception:  # exotic __eq__ in a literal cannot happen, but a scan must not crash
        return False


def answer_literals(source: Path | str | Notebook) -> list[AnswerLiteral]:
    """The constant answers of the solutions in a source notebook (path or loaded notebook): the literals a
    solution region returns or assigns at its own top level."""
    notebook = source if isinstance(source, dict) else load_notebook(Path(source))
    found: list[AnswerLiteral] = []
    for index, cell in enumerate(notebook["cells"]):
        spec = cell_spec(cell, index)
        if spec.role != "solution" or cell.get("cell_type") != "code" or spec.question is None:
            continue
        tree = _code(_solution_regions(cell_source(cell)))
        # only the region's own statements: a literal deep inside a solution's logic is not its answer
        for node in tree.body if tree else ():
            value = node.value if isinstance(node, ast.Return | ast.Assign | ast.AnnAssign) else None
            ok, literal = _literal(value)
            if ok and literal not in ((), frozenset()) and not any(
                _same(literal, f.value) and f.question == spec.question for f in found
            ):
                found.append(AnswerLiteral(spec.question, literal))
    return found


_CHECK_CALLS = re.compile(r"^(expect\w*|assert\w*|fail)$")


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _scan_code(tree: ast.Module, literals: list[AnswerLiteral], where: str) -> list[Leak]:
    leaks: list[Leak] = []

    def hit(node: ast.AST | None, how: str, strict: bool) -> None:
        ok, value = _literal(node)
        if not ok:
            return
        for one in literals:
            if (strict or one.distinctive) and _same(value, one.value):
                leaks.append(Leak(one.question, one.value, where, how))
            elif (
                strict
                and isinstance(value, frozenset | tuple)
                and not isinstance(one.value, frozenset | tuple)
                and len(value) <= 2
                and any(_same(v, one.value) for v in value)
            ):
                leaks.append(Leak(one.question, one.value, where, f"{how}, in a small set"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hit(operand, "compared with", True)
        elif isinstance(node, ast.Call) and _CHECK_CALLS.match(_call_name(node)):
            for arg in (*node.args, *(k.value for k in node.keywords)):
                hit(arg, f"an argument of {_call_name(node)}()", True)
        elif isinstance(node, ast.Constant | ast.Tuple | ast.Set | ast.List):
            hit(node, "a literal", False)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] == "hashlib" for n in names):
                leaks.append(Leak("*", "hashlib", where, "a hash of a small answer space is brute-forced at once"))
    return _unique(leaks)


def _unique(leaks: list[Leak]) -> list[Leak]:
    seen: list[Leak] = []
    for leak in leaks:
        if not any(leak.question == s.question and _same(leak.value, s.value) and leak.where == s.where for s in seen):
            seen.append(leak)
    return seen


def _scan_markdown(text: str, literals: list[AnswerLiteral], where: str) -> list[Leak]:
    leaks = []
    for one in literals:
        pattern = rf"(?<!\w){re.escape(str(one.value).strip())}(?!\w)"
        if isinstance(one.value, str) and one.distinctive and re.search(pattern, text, re.IGNORECASE):
            leaks.append(Leak(one.question, one.value, where, "in the text"))
    return leaks


def _lab_modules(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "vlab.labs":
            names.update(f"vlab.labs.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlab.labs."):
            names.add(str(node.module))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("vlab.labs."))
    return names


def scan(student: Path | str | Notebook, literals: list[AnswerLiteral]) -> list[Leak]:
    """Every place in ``student`` (a student notebook: all its cells are visible) and in the ``vlab.labs``
    modules it imports where one of ``literals`` (or a hash) shows."""
    notebook = student if isinstance(student, dict) else load_notebook(Path(student))
    leaks: list[Leak] = []
    modules: set[str] = set()
    for index, cell in enumerate(notebook["cells"]):
        text = cell_source(cell)
        where = f"cell {index}"
        if cell.get("cell_type") == "markdown":
            leaks += _scan_markdown(text, literals, where)
        elif cell.get("cell_type") == "code":
            tree = _code(text)
            if tree is not None:
                leaks += _scan_code(tree, literals, where)
                modules |= _lab_modules(tree)
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        tree = _code(Path(spec.origin).read_text(encoding="utf-8"))
        if tree is not None:
            leaks += _scan_code(tree, literals, f"{name} (the student's copy of vlab)")
    return leaks


def scan_lab(source: Path | str) -> list[Leak]:
    """Scan the student notebook ``vlab assign`` makes from ``source`` for the source's answer literals."""
    import json

    from vlab.grading.assign import build

    return scan(json.loads(build(source).student_text), answer_literals(source))
