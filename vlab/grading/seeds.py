"""Per-student seeds, keyed by an instructor secret.

Two HMAC-SHA256 steps::

    key(student)        = HMAC(secret, "vlab-student-key\\0" + student)[:16 hex]
    seed(student, lab)  = first 4 bytes of HMAC(key(student), "vlab-seed\\0" + lab), as an int

The instructor hands each student their *key* (``vlab grade-keys roster.txt``); with it the
student's notebook computes the same seed as the grader, but no student can compute another's.
The grader gives the kernel the student's id and key (``VLAB_STUDENT_ID``, ``VLAB_STUDENT_KEY``),
never the secret. Without any secret the public :data:`SELF_STUDY_SECRET` is used: fine for
self-study, where anyone may compute every seed.

A lab derives its parameters from the seed with its own ``params_for(seed)`` (see
``labs/README.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from vlab.errors import VlabError

__all__ = [
    "SELF_STUDY_SECRET",
    "instructor_secret",
    "seed_for",
    "student_id",
    "student_key",
    "valid_student_id",
]

#: The documented secret used when no instructor secret is configured.
SELF_STUDY_SECRET = "vlab-self-study"

_ID_RE = re.compile(r"^[A-Za-z0-9.@+-]{1,64}$")


def valid_student_id(value: str) -> bool:
    """Whether ``value`` is a usable student id (``[A-Za-z0-9.@+-]``, at most 64 characters)."""
    return bool(_ID_RE.match(value))


def instructor_secret() -> str:
    """The instructor secret: ``VLAB_GRADING_SECRET``, the file ``VLAB_GRADING_SECRET_FILE``,
    ``~/.config/vlab/grading-secret``, else :data:`SELF_STUDY_SECRET`."""
    env = os.environ.get("VLAB_GRADING_SECRET")
    if env:
        return env
    named = os.environ.get("VLAB_GRADING_SECRET_FILE")
    path = Path(named) if named else Path.home() / ".config" / "vlab" / "grading-secret"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        if named:
            raise VlabError(
                "cannot read the grading secret file",
                field="VLAB_GRADING_SECRET_FILE",
                value=named,
                fix="point it at a readable file holding one line of secret text",
            ) from None
        return SELF_STUDY_SECRET
    return text or SELF_STUDY_SECRET


def student_id(given: str | None = None) -> str:
    """The student id: ``VLAB_STUDENT_ID`` if set (it wins), else ``given``, else ``"self-study"``.

    :raises VlabError: if the id has characters other than ``[A-Za-z0-9.@+-]``.
    """
    value = os.environ.get("VLAB_STUDENT_ID") or given or "self-study"
    if not valid_student_id(value):
        raise VlabError(
            "a student id may only use letters, digits and . @ + -",
            field="STUDENT_ID",
            value=value,
            fix='use your university login, e.g. STUDENT_ID = "alice.m"',
        )
    return value


def student_key(student: str, secret: str | None = None) -> str:
    """The key an instructor hands to ``student`` (16 hex digits)."""
    secret = instructor_secret() if secret is None else secret
    mac = hmac.new(secret.encode(), b"vlab-student-key\0" + student.encode(), hashlib.sha256)
    return mac.hexdigest()[:16]


def seed_for(student: str | None, lab: str, *, key: str | None = None, secret: str | None = None) -> int:
    """The seed of ``student`` for ``lab``: a deterministic 32-bit int.

    :param student: the student id (``VLAB_STUDENT_ID`` overrides it, see :func:`student_id`).
    :param lab: the lab id, e.g. ``"03"``.
    :param key: the student's key; default ``VLAB_STUDENT_KEY``, else derived from the secret.
    :param secret: the instructor secret; default :func:`instructor_secret`.
    """
    sid = student_id(student)
    key = key or os.environ.get("VLAB_STUDENT_KEY") or student_key(sid, secret)
    mac = hmac.new(key.encode(), b"vlab-seed\0" + str(lab).encode(), hashlib.sha256)
    return int.from_bytes(mac.digest()[:4], "big")
