"""The autograder bundle as typed data: what grading needs and students must not see.

``vlab assign`` writes a bundle as JSON (``labs/autograder/NN.json``); the grader reads it once
with :meth:`Bundle.from_dict`, which checks every field, and passes :class:`Bundle` objects around;
JSON appears only where a bundle crosses a process boundary (:meth:`Bundle.to_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vlab.errors import VlabError
from vlab.grading.assign import BUNDLE_FORMAT, DEFAULT_LIMITS
from vlab.grading.seeds import DEFAULT_COURSE

__all__ = ["Bundle", "CheckEntry", "CheckSource", "Limits", "LockedCell", "Question"]


@dataclass(frozen=True)
class Limits:
    """Grading limits of a lab (the source notebook's metadata ``vlab.limits`` overrides the defaults)."""

    cell_timeout: float = DEFAULT_LIMITS["cell_timeout"]
    notebook_timeout: float = DEFAULT_LIMITS["notebook_timeout"]
    memory_mb: int = int(DEFAULT_LIMITS["memory_mb"])
    address_space_mb: int = int(DEFAULT_LIMITS["address_space_mb"])
    processes: int = int(DEFAULT_LIMITS["processes"])
    cpu_percent: int = int(DEFAULT_LIMITS["cpu_percent"])
    call_timeout: float = DEFAULT_LIMITS["call_timeout"]
    file_mb: int = 4096

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Limits:
        """Known keys converted to their type (a bad value is a VlabError); unknown keys are ignored."""
        values: dict[str, Any] = {}  # field name → its checked value, of that field's type
        for one in fields(cls):
            if one.name in data:
                raw = data[one.name]
                kind = type(getattr(cls(), one.name))
                if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
                    raise VlabError(
                        "a limit must be a positive number",
                        field=f"bundle limits.{one.name}",
                        value=raw,
                        fix="fix vlab.limits in the source notebook and run `vlab assign` again",
                    )
                values[one.name] = kind(raw)
        return cls(**values)


@dataclass(frozen=True)
class Question:
    """One question: its title and the points of all its checks."""

    title: str
    points: float


@dataclass(frozen=True)
class CheckEntry:
    """One check as the bundle lists it (``vlab assign`` ran the check cells to find it)."""

    question: str
    name: str
    points: float
    hidden: bool


@dataclass(frozen=True)
class CheckSource:
    """A public (``checks``) or hidden check cell: its source runs in the grader."""

    cell: str
    question: str | None
    hidden: bool
    source: str


@dataclass(frozen=True)
class LockedCell:
    """A cell the student may not change (``checks``, ``readonly``, ``params`` roles, the release cell).

    :param sha256: :func:`~vlab.grading.format.digest` of its source; empty for a cell whose content may
        differ per student (the release cell): then only its presence, place and type are compared.
    :param cell_type: ``code`` or ``markdown``; None in bundles that do not say (inferred from the source).
    """

    cell: str
    question: str | None
    sha256: str
    cell_type: str | None = None

    def expected_type(self, source: str) -> str:
        """The cell type it must have: as recorded, else what its verified source's header says."""
        if self.cell_type:
            return self.cell_type
        return "markdown" if source.lstrip().startswith("<!--") else "code"


@dataclass(frozen=True)
class Bundle:
    """Everything the grader knows about a lab."""

    lab: str
    questions: dict[str, Question]
    exports: tuple[str, ...]
    check_sources: tuple[CheckSource, ...]
    readonly: tuple[LockedCell, ...]
    params_source: str | None = None
    limits: Limits = field(default_factory=Limits)
    course: str = DEFAULT_COURSE
    release_cell: str | None = None
    checks: tuple[CheckEntry, ...] = ()
    source_name: str = ""
    student_sha256: str = ""
    format: str = BUNDLE_FORMAT

    @property
    def locked(self) -> tuple[LockedCell, ...]:
        """Every locked cell: the checksummed ones, and the release cell (per student: place and type only)."""
        if self.release_cell is None:
            return self.readonly
        return (LockedCell(self.release_cell, None, "", "code"), *self.readonly)

    @property
    def max_points(self) -> float:
        return float(sum(q.points for q in self.questions.values()))

    def to_dict(self) -> dict[str, Any]:  # the JSON form: a Job crosses into the supervisor as JSON
        """The JSON form (as ``vlab assign`` writes it)."""
        data = asdict(self)  # records become dicts, tuples stay tuples (JSON lists either way)
        data["exports"] = list(self.exports)
        data["checks"] = list(data["checks"])
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "bundle") -> Bundle:
        """Check and convert a parsed bundle.

        :raises VlabError: naming the first field that is missing or has the wrong type.
        """

        def need(container: Any, key: str, kind: type | tuple[type, ...], name: str) -> Any:
            value = container.get(key) if isinstance(container, dict) else None
            if not isinstance(value, kind):
                raise VlabError(
                    "missing or malformed bundle field",
                    field=f"{where} {name}",
                    value=value,
                    fix="regenerate the bundle with `vlab assign`",
                )
            return value

        if need(data, "format", str, "format") != BUNDLE_FORMAT:
            raise VlabError(
                f"not a {BUNDLE_FORMAT} bundle", field=f"{where} format", value=data["format"], fix="run `vlab assign`"
            )
        questions = {
            str(qid): Question(str(need(q, "title", str, f"questions.{qid}.title")),
                               float(need(q, "points", (int, float), f"questions.{qid}.points")))
            for qid, q in need(data, "questions", dict, "questions").items()
        }
        sources = tuple(
            CheckSource(
                str(need(e, "cell", str, f"check_sources[{i}].cell")),
                e.get("question"),
                bool(need(e, "hidden", bool, f"check_sources[{i}].hidden")),
                str(need(e, "source", str, f"check_sources[{i}].source")),
            )
            for i, e in enumerate(need(data, "check_sources", list, "check_sources"))
        )
        locked = tuple(
            LockedCell(
                str(need(e, "cell", str, f"readonly[{i}].cell")),
                e.get("question"),
                str(e.get("sha256") or ""),
                e.get("cell_type") if e.get("cell_type") in ("code", "markdown", "raw") else None,
            )
            for i, e in enumerate(need(data, "readonly", list, "readonly"))
        )
        exports = need(data, "exports", list, "exports")
        if not all(isinstance(name, str) for name in exports):
            raise VlabError("exports must be names", field=f"{where} exports", value=exports, fix="run `vlab assign`")
        checks = tuple(
            CheckEntry(
                str(need(c, "question", str, f"checks[{i}].question")),
                str(need(c, "name", str, f"checks[{i}].name")),
                float(need(c, "points", (int, float), f"checks[{i}].points")),
                bool(need(c, "hidden", bool, f"checks[{i}].hidden")),
            )
            for i, c in enumerate(data.get("checks") or [])
        )
        params = data.get("params_source")
        return cls(
            lab=str(need(data, "lab", str, "lab")),
            questions=questions,
            exports=tuple(exports),
            check_sources=sources,
            readonly=locked,
            params_source=params if isinstance(params, str) else None,
            limits=Limits.from_dict(data.get("limits") or {}),
            course=str(data.get("course") or DEFAULT_COURSE),
            release_cell=data["release_cell"] if isinstance(data.get("release_cell"), str) else None,
            checks=checks,
            source_name=str(data.get("source_name", "")),
            student_sha256=str(data.get("student_sha256", "")),
        )
