"""What grading one submission gives, as typed data (JSON only where it leaves a process).

:class:`SubmissionResult` is what :func:`~vlab.grading.sandbox.grade_submission` returns and the
gradebook reads; every part of it is a record (:class:`QuestionScore`, :class:`CellError`,
:class:`~vlab.grading.checks.CheckResult`, :class:`~vlab.grading.integrity.Tampering`,
:class:`Leftover`). The supervisor writes it as JSON (:meth:`SubmissionResult.to_dict`, the
``result.json`` format) and the caller reads it back with :meth:`SubmissionResult.from_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vlab.grading.checks import CheckResult
from vlab.grading.integrity import Tampering

__all__ = ["FLAGS", "CellError", "Leftover", "QuestionScore", "SubmissionResult", "status_of"]

#: Status flags in the order the status string lists them.
FLAGS = (
    "invalid",
    "tampered",
    "timeout",
    "memory",
    "processes",
    "kernel-died",
    "errors",
    "export-failed",
    "unanswered",
    "unchecked",
    "leftovers",
    "grader-error",
)


def status_of(flags: list[str]) -> str:
    """``ok``, or the flags joined by ``+`` in :data:`FLAGS` order."""
    ordered = [f for f in FLAGS if f in flags]
    return "+".join(ordered) if ordered else "ok"


@dataclass
class QuestionScore:
    """One question's points (0 when a locked cell of it was tampered with). Mutable: scored in place."""

    score: float
    max: float
    tampered: bool = False


@dataclass(frozen=True)
class CellError:
    """A notebook cell that raised: its index, the exception's name and (the start of) its message."""

    cell: int
    ename: str
    evalue: str


@dataclass(frozen=True)
class Leftover:
    """A process the notebook left running (found by namespace or cgroup membership, then killed)."""

    pid: int
    command: str


@dataclass
class SubmissionResult:
    """The result of grading one submission (one gradebook row and one feedback file).

    Mutable: the supervisor fills it in step by step (flags, errors, scores) before writing it once.
    """

    student: str
    lab: str
    submission: str
    questions: dict[str, QuestionScore]
    max: float
    isolation: str = "auto"
    flags: list[str] = field(default_factory=list)
    total: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)
    cell_errors: list[CellError] = field(default_factory=list)
    tampered_cells: list[Tampering] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    export_problems: dict[str, str] = field(default_factory=dict)  # exported name (or "*") → why it failed
    notes: list[str] = field(default_factory=list)
    output_bytes: int = 0
    seconds: float = 0.0
    supervisor_peak_mib: float = 0.0

    @property
    def status(self) -> str:
        return status_of(self.flags)

    def flag(self, name: str) -> None:
        if name not in FLAGS:
            raise ValueError(f"unknown status flag {name!r}")
        if name not in self.flags:
            self.flags.append(name)

    def to_dict(self) -> dict[str, Any]:  # the JSON form: result.json and the feedback files
        """The JSON form (with ``status``); a check as :meth:`~vlab.grading.checks.CheckResult.as_dict`."""
        return {
            "student": self.student,
            "lab": self.lab,
            "submission": self.submission,
            "questions": {q: asdict(s) for q, s in self.questions.items()},
            "max": self.max,
            "isolation": self.isolation,
            "flags": list(self.flags),
            "total": self.total,
            "checks": [c.as_dict() for c in self.checks],  # not asdict: the JSON form has no "unanswered"
            "cell_errors": [asdict(e) for e in self.cell_errors],
            "tampered_cells": [t.as_dict() for t in self.tampered_cells],
            "leftovers": [asdict(p) for p in self.leftovers],
            "export_problems": dict(self.export_problems),
            "notes": list(self.notes),
            "output_bytes": self.output_bytes,
            "seconds": self.seconds,
            "supervisor_peak_mib": self.supervisor_peak_mib,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubmissionResult:  # parsed result.json: JSON until converted here
        """Read back what :meth:`to_dict` wrote (in a process the caller started: trusted, but checked for shape).

        :raises KeyError, TypeError, ValueError: if it is not such a dict.
        """
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["questions"] = {q: QuestionScore(**s) for q, s in data["questions"].items()}
        values["checks"] = [CheckResult(**c) for c in data.get("checks", [])]
        values["cell_errors"] = [CellError(**e) for e in data.get("cell_errors", [])]
        values["tampered_cells"] = [Tampering(**t) for t in data.get("tampered_cells", [])]
        values["leftovers"] = [Leftover(**p) for p in data.get("leftovers", [])]
        return cls(**values)
