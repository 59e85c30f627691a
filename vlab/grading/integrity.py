"""Is the submission a notebook, and are its locked cells the instructor's?

:func:`parse_submission` accepts only a well-formed nbformat-4 notebook (anything else is graded
``invalid``, never a grader error). :func:`find_tampering` compares the locked cells with the bundle
by id, type, content (SHA-256), count and order, and :func:`verified_sources` returns the locked
code cells whose content is proven to be the instructor's -- the only notebook code the grader
itself ever runs. :func:`pinned_exports` names what those cells export, which the grader takes as
soon as each has run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vlab.grading.bundle import Bundle, LockedCell
from vlab.grading.format import Cell, Notebook, cell_spec, digest

__all__ = [
    "MAX_NOTEBOOK_BYTES",
    "Tampering",
    "find_tampering",
    "parse_submission",
    "pinned_exports",
    "verified_sources",
]

MAX_NOTEBOOK_BYTES = 20 * 2**20
_CELL_TYPES = ("code", "markdown", "raw")


@dataclass(frozen=True)
class Tampering:
    """One locked cell that is not as the instructor wrote it."""

    cell: str
    question: str | None
    problem: str  # deleted | edited | type-changed | duplicated | reordered

    def as_dict(self) -> dict[str, str | None]:
        """The JSON form (``tampered_cells`` in result.json and the feedback)."""
        return {"cell": self.cell, "question": self.question, "problem": self.problem}


def _valid_cell(cell: Any) -> bool:
    if not isinstance(cell, dict) or cell.get("cell_type") not in _CELL_TYPES:
        return False
    source = cell.get("source", "")
    if not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
        return False
    return ("id" not in cell or isinstance(cell["id"], str)) and isinstance(cell.get("metadata", {}), dict)


def parse_submission(text: str | bytes) -> tuple[Notebook | None, str]:
    """The notebook, or None and why it is ``invalid``. Sources become plain strings."""
    if len(text) > MAX_NOTEBOOK_BYTES:
        return None, f"the notebook is larger than {MAX_NOTEBOOK_BYTES >> 20} MiB"
    try:
        notebook = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "the submission is not a readable Jupyter notebook (not JSON)"
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None, "the submission is not a Jupyter notebook (no list of cells)"
    for index, cell in enumerate(notebook["cells"]):
        if not _valid_cell(cell):
            return None, f"cell {index} is malformed (cell_type, source, id or metadata of the wrong kind)"
        source = cell.get("source", "")
        cell["source"] = "".join(source) if isinstance(source, list) else source
    return notebook, ""


def _positions(notebook: Notebook) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for index, cell in enumerate(notebook["cells"]):
        if isinstance(cell.get("id"), str):
            found.setdefault(cell["id"], []).append(index)
    return found


def _problem(entry: LockedCell, cell: Cell) -> str | None:
    if cell["cell_type"] != entry.expected_type(cell["source"]):
        return "type-changed"
    if entry.sha256 and digest(cell["source"]) != entry.sha256:
        return "edited"
    return None


def _out_of_order(places: list[int]) -> set[int]:
    """Indexes into ``places`` outside one longest increasing run: the fewest cells that were moved."""
    if not places:
        return set()
    best = [1] * len(places)
    before = [-1] * len(places)
    for i, place in enumerate(places):
        for j in range(i):
            if places[j] < place and best[j] + 1 > best[i]:
                best[i], before[i] = best[j] + 1, j
    keep, i = set(), max(range(len(places)), key=best.__getitem__)
    while i != -1:
        keep.add(i)
        i = before[i]
    return set(range(len(places))) - keep


def find_tampering(notebook: Notebook, bundle: Bundle) -> list[Tampering]:
    """Every locked cell that was deleted, edited, turned into another type, duplicated or moved.

    A duplicate (a pristine copy beside an edited one) counts however the copies compare: the kernel runs both.
    Locked cells must keep the bundle's order (the fewest moved cells are named); cells the student adds may go
    anywhere.
    """
    positions = _positions(notebook)
    found: list[Tampering] = []
    in_place: list[tuple[LockedCell, int]] = []
    for entry in bundle.locked:
        places = positions.get(entry.cell, [])
        problem = None
        if not places:
            problem = "deleted"
        elif len(places) > 1:
            problem = "duplicated"
        else:
            problem = _problem(entry, notebook["cells"][places[0]])
            if problem is None and entry.sha256:  # the release cell is per student: presence and type only
                in_place.append((entry, places[0]))
        if problem is not None:
            found.append(Tampering(entry.cell, entry.question, problem))
    for index in sorted(_out_of_order([place for _, place in in_place])):
        entry = in_place[index][0]
        found.append(Tampering(entry.cell, entry.question, "reordered"))
    return found


def _verified_cells(notebook: Notebook, bundle: Bundle) -> Iterator[tuple[int, str]]:
    """``(index, source)`` of each locked code cell that matches the bundle exactly (in the bundle's order)."""
    positions = _positions(notebook)
    for entry in bundle.readonly:
        places = positions.get(entry.cell, [])
        if len(places) == 1 and entry.sha256:
            cell = notebook["cells"][places[0]]
            if cell["cell_type"] == "code" and _problem(entry, cell) is None:
                yield places[0], cell["source"]


def verified_sources(notebook: Notebook, bundle: Bundle) -> list[str]:
    """Sources of the locked code cells that match the bundle exactly (in the bundle's order)."""
    return [source for _, source in _verified_cells(notebook, bundle)]


def pinned_exports(notebook: Notebook, bundle: Bundle) -> dict[int, tuple[str, ...]]:
    """Cell index → the names a verified locked cell exports (its header's ``exports=``): the grader takes
    these right after that cell ran, so a later student cell cannot replace what it measured."""
    pins = {}
    for index, source in _verified_cells(notebook, bundle):
        # the header of the verified source, never the cell's metadata (which the student may edit)
        names = cell_spec({"cell_type": "code", "source": source, "metadata": {}}, index).exports
        if names:
            pins[index] = tuple(names)
    return pins
