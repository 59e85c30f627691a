"""The auto-grader: one source notebook → a student release + hidden checks; sandboxed grading.

One module per concern (the lab format is documented for authors in ``labs/README.md``):

* :mod:`~vlab.grading.format` — cell roles (solution / checks / hidden / readonly / params / omit),
  solution markers, checksums.
* :mod:`~vlab.grading.assign` — ``vlab assign``: the student notebook and the autograder bundle;
  :func:`is_stale`.
* :mod:`~vlab.grading.checks` — checks with points and misconception messages; :func:`check` in
  the notebook.
* :mod:`~vlab.grading.seeds` — per-student seeds keyed by an instructor secret.
* :mod:`~vlab.grading.exports` — what leaves the student's kernel (values as JSON, functions as
  source) and the sandboxed process that runs student functions for the checks.
* :mod:`~vlab.grading.bundle`, :mod:`~vlab.grading.results` — the bundle and a submission's result as
  typed data.
* :mod:`~vlab.grading.integrity` — is it a notebook, are its locked cells the instructor's.
* :mod:`~vlab.grading.jail`, :mod:`~vlab.grading.mounts` — the jail around every student process
  (allow-list root, namespaces, throw-away uid or user namespace, cgroup, rlimits) and the sweep.
* :mod:`~vlab.grading.sandbox` — grades one submission in its own process.
* :mod:`~vlab.grading.gradebook` — CSV, per-student JSON/HTML feedback, summary.
* :mod:`~vlab.grading.runner` — many submissions on a local pool or a Dask cluster.
* :mod:`~vlab.grading.cli` — ``vlab assign``, ``vlab grade``, ``vlab grade-keys``.
* :mod:`~vlab.grading.testing` — helpers for the labs' own tests.
"""

from __future__ import annotations

from vlab.grading.assign import assign, build, is_stale
from vlab.grading.checks import (
    CheckFailed,
    check,
    check_for,
    expect,
    expect_close,
    expect_equal,
    fail,
)
from vlab.grading.seeds import seed_for, student_key

__all__ = [
    "CheckFailed",
    "assign",
    "build",
    "check",
    "check_for",
    "expect",
    "expect_close",
    "expect_equal",
    "fail",
    "is_stale",
    "seed_for",
    "student_key",
]
