"""Per-student parameters: one public derivation, so what a student sees locally is what is graded.

::

    seed_for(student, lab, course) = first 4 bytes of SHA-256("vlab-seed\\0" course \\0 lab \\0 student)
    practice_seed(lab)             = first 4 bytes of SHA-256("vlab-practice\\0" lab)

There is no secret: anyone may compute anyone's parameters. Secrecy comes from the *hidden checks*
(they run only in the grader, on the student's own instance), not from the parameters; the
parameters only make copying a neighbour's numbers useless. In exchange a student always sees,
without setting anything, the exact parameters the grader will use.

A lab's ``params`` cell calls :func:`setup`, which resolves the student (:func:`resolve_student`)
and returns a :class:`LabSetup`: the student's parameters and the *practice* parameters (public
checks run on those, so they never reveal the student's answer). The grader computes the same
parameters from the bundle's copy of the lab's ``params_for`` with the submission owner's id and
the bundle's ``course`` (``vlab assign --course``).
"""

from __future__ import annotations

import hashlib
import html
import os
import pprint
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vlab.errors import VlabError

__all__ = [
    "DEFAULT_COURSE",
    "SELF_STUDY",
    "LabSetup",
    "practice_seed",
    "resolve_student",
    "seed_for",
    "setup",
    "valid_student_id",
]

#: The student id when nothing names one, and the course of the notebooks in the repository.
SELF_STUDY = "self-study"
DEFAULT_COURSE = SELF_STUDY

_ID_RE = re.compile(r"^[A-Za-z0-9.@+-]{1,64}$")
_COURSE_RE = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")
_LAB_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


def valid_student_id(value: object) -> bool:
    """Whether ``value`` is a usable student id (``[A-Za-z0-9.@+-]``, at most 64 characters)."""
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value))


def _checked(value: object, pattern: re.Pattern[str], field: str, fix: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise VlabError(f"not a valid {field.lower()}", field=field, value=value, fix=fix)
    return value


def _student(value: object, field: str = "student") -> str:
    return _checked(value, _ID_RE, field, 'use letters, digits and . @ + - only (at most 64), e.g. "alice.m"')


def _lab(value: object) -> str:
    return _checked(value, _LAB_RE, "lab", 'use the lab id, e.g. "04"')


def _course(value: object) -> str:
    return _checked(value, _COURSE_RE, "course", 'use letters, digits and . _ + - only, e.g. "os-2026"')


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:4], "big")


def seed_for(student: str, lab: str, course: str = DEFAULT_COURSE) -> int:
    """The seed of ``student`` for ``lab`` in ``course``: a deterministic 32-bit int (no secret).

    :raises VlabError: if an argument is not a valid id.
    """
    return _seed("vlab-seed", _course(course), _lab(lab), _student(student))


def practice_seed(lab: str) -> int:
    """The public seed of ``lab``'s practice instance (the same for every student and course)."""
    return _seed("vlab-practice", _lab(lab))


def resolve_student(released_for: str | None = None) -> tuple[str, str]:
    """Who the notebook belongs to, and where that came from.

    In order: ``VLAB_STUDENT_ID`` (the grader sets it), ``JUPYTERHUB_USER`` (a course's JupyterHub),
    ``released_for`` (the id ``vlab assign --roster`` baked into the student's released notebook),
    else :data:`SELF_STUDY`.

    :returns: ``(student id, source)``, source one of the names above or ``"default"``.
    :raises VlabError: if the id found is not a valid student id.
    """
    for name in ("VLAB_STUDENT_ID", "JUPYTERHUB_USER"):
        value = os.environ.get(name)
        if value:
            return _student(value, name), name
    if released_for:
        return _student(released_for, "RELEASED_FOR"), "RELEASED_FOR"
    return SELF_STUDY, "default"


@dataclass(frozen=True)
class LabSetup:
    """What a lab's ``params`` cell shows: the student's instance and the public practice instance.

    :param params: the student's parameters: exactly what the grader's hidden checks use.
    :param practice: the practice parameters: what the public checks in the notebook use.
    :param source: where the student id came from (see :func:`resolve_student`).
    """

    lab: str
    course: str
    student: str
    source: str
    seed: int
    params: dict[str, Any]  # the lab's params_for(seed): any values the lab chooses
    practice_seed: int
    practice: dict[str, Any]  # the same, for the practice seed

    def text(self) -> str:
        who = f"student {self.student!r} (from {self.source}), course {self.course!r}"
        lines = [
            f"Lab {self.lab}, {who}",
            "Your instance: the grader uses exactly these parameters for your hidden checks:",
            "  PARAMS = " + pprint.pformat(self.params, width=100, compact=True).replace("\n", "\n  "),
            "Practice instance (public, the same for everyone; the public checks run on it):",
            "  PRACTICE = " + pprint.pformat(self.practice, width=100, compact=True).replace("\n", "\n  "),
        ]
        if self.source == "default":
            lines.append(
                "Note: this notebook does not know who you are, so it uses the self-study instance. For a course, "
                "open the notebook released for you (or run it on the course's JupyterHub): otherwise the "
                "numbers you write down are not the ones you are graded on."
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"


def _params(params_for: Callable[[int], Mapping[str, Any]], seed: int) -> dict[str, Any]:  # any values
    value = params_for(seed)
    if not isinstance(value, Mapping):
        raise VlabError(
            "params_for must return a dict of parameters",
            field="params_for",
            value=type(value).__name__,
            fix="return e.g. {'levels': 4} built from random.Random(seed)",
        )
    return dict(value)


def setup(
    lab: str,
    params_for: Callable[[int], Mapping[str, Any]],
    *,
    course: str = DEFAULT_COURSE,
    released_for: str | None = None,
) -> LabSetup:
    """The parameters of this notebook's student and of the practice instance (the lab's ``params`` cell).

    :param lab: the lab id, e.g. ``"04"``.
    :param params_for: the lab's ``seed -> dict`` (the grader calls the bundle's copy of it).
    :param course: ``COURSE`` from the notebook's release cell.
    :param released_for: ``RELEASED_FOR`` from the notebook's release cell (None in the repository's copy).
    """
    if not callable(params_for):
        raise VlabError("must be a function seed -> dict", field="params_for", value=params_for)
    student, source = resolve_student(released_for)
    seed = seed_for(student, lab, course)
    practice = practice_seed(lab)
    return LabSetup(
        lab=lab,
        course=course,
        student=student,
        source=source,
        seed=seed,
        params=_params(params_for, seed),
        practice_seed=practice,
        practice=_params(params_for, practice),
    )
