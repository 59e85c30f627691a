"""The auto-grader: one source notebook → a student release + hidden checks; sandboxed grading.

One module per concern (the lab format is documented for authors in ``labs/README.md``):

* :mod:`~vlab.grading.format` — cell roles (solution / checks / hidden / readonly / params / omit),
  solution markers, checksums.
* :mod:`~vlab.grading.assign` — ``vlab assign``: the student notebook and the autograder bundle;
  :func:`is_stale`.
* :mod:`~vlab.grading.checks` — checks with points and misconception messages; :func:`check` in
  the notebook.
* :mod:`~vlab.grading.seeds` — per-student parameters without a secret (:func:`setup` in the
  ``params`` cell: the student's instance and the practice instance).
* :mod:`~vlab.grading.choice` — multiple choice, shuffled per student, options of similar length.
* :mod:`~vlab.grading.predict` — :func:`predict_then_measure`: the figure only after the prediction.
* :mod:`~vlab.grading.scan` — finds a solution's answer literals in what students can see.
* :mod:`~vlab.grading.exports` — what leaves the student's kernel (values as JSON, functions as
  source).
* :mod:`~vlab.grading.hosts`, :mod:`~vlab.grading.remote` — the two jailed processes that run what the
  checks call (the instructor's helpers in one, the student's functions in the other) and the objects
  passed by reference between them.
* :mod:`~vlab.grading.bundle`, :mod:`~vlab.grading.results` — the bundle and a submission's result as
  typed data.
* :mod:`~vlab.grading.integrity` — is it a notebook, are its locked cells the instructor's.
* :mod:`~vlab.grading.jail`, :mod:`~vlab.grading.mounts` — the jail around every student process
  (allow-list root, namespaces, throw-away uid or user namespace, cgroup, rlimits) and the sweep.
* :mod:`~vlab.grading.sandbox` — grades one submission in its own process.
* :mod:`~vlab.grading.gradebook` — CSV, per-student JSON/HTML feedback, summary.
* :mod:`~vlab.grading.runner` — many submissions on a local pool or a Dask cluster.
* :mod:`~vlab.grading.cli` — ``vlab assign``, ``vlab grade``.
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
    needs_host,
)
from vlab.grading.choice import Choice
from vlab.grading.predict import Prediction, predict_then_measure
from vlab.grading.seeds import LabSetup, practice_seed, resolve_student, seed_for, setup

__all__ = [
    "CheckFailed",
    "Choice",
    "LabSetup",
    "Prediction",
    "assign",
    "build",
    "check",
    "check_for",
    "expect",
    "expect_close",
    "expect_equal",
    "fail",
    "is_stale",
    "needs_host",
    "practice_seed",
    "predict_then_measure",
    "resolve_student",
    "seed_for",
    "setup",
]
