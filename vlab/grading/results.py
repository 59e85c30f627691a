"""What grading one submission gives, as typed data (JSON only where it leaves a process).

:class:`SubmissionResult` is what :func:`~vlab.grading.sandbox.grade_submission` returns and the
gradebook reads; the supervisor writes it as JSON (:meth:`SubmissionResult.to_dict`) and the caller
reads it back with :meth:`SubmissionResult.from_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FLAGS", "CellError", "QuestionScore", "SubmissionResult", "status_of"]

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
    "leftovers",
    "grader-error",
)


def status_of(flags: list[str]) -> str:
    """``ok``, or the flags joined by ``+`` in :data:`FLAGS` order."""
    ordered = [f for f in FLAGS if f in flags]
    return "+".join(ordered) if ordered else "ok"


@dataclass
class QuestionScore:
    """One question's points (0 when a locked cell of it was tampered with)."""

    score: float
    max: float
    tampered: bool = False


@dataclass(frozen=True)
class CellError:
    """A notebook cell that raised: its index, the exception's name and (the start of) its message."""

    cell: int
    ename: str
    evalue: str


@dataclass
class SubmissionResult:
    """The result of grading one submission (one gradebook row and one feedback file)."""

    student: str
    lab: str
    submission: str
    questions: dict[str, QuestionScore]
    max: float
    isolation: str = "auto"
    flags: list[str] = field(default_factory=list)
    total: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)  # CheckResult.as_dict()
    cell_errors: list[CellError] = field(default_factory=list)
    tampered_cells: list[dict[str, Any]] = field(default_factory=list)  # Tampering.as_dict()
    leftovers: list[dict[str, Any]] = field(default_factory=list)  # {"pid", "command"}
    export_problems: dict[str, str] = field(default_factory=dict)
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

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (with ``status``)."""
        return {**asdict(self), "status": self.status}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubmissionResult:
        """Read back what :meth:`to_dict` wrote (in a process the caller started: trusted, but checked for shape)."""
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["questions"] = {q: QuestionScore(**s) for q, s in data["questions"].items()}
        values["cell_errors"] = [CellError(**e) for e in data.get("cell_errors", [])]
        return cls(**values)
