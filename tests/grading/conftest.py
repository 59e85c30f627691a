"""Shared fixtures: the example lab assigned into a temp dir, one batch of synthetic submissions, and a
place to start jails in (:func:`place`, :func:`jail_spec`).

The batch is graded once per session (local pool, 2 workers) through the real sandbox; the
tests in test_sandbox.py, test_gradebook.py and test_runner.py assert on its results.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grading import grading_submissions as s
from tests.grading.grading_submissions import EXAMPLE_SOURCE
from vlab.grading.assign import Assignment, assign
from vlab.grading.bundle import Bundle
from vlab.grading.jail import JailSpec
from vlab.grading.mounts import student_readonly
from vlab.grading.results import SubmissionResult
from vlab.grading.runner import find_submissions, grade_all, make_jobs

SECRET = "test-course-secret"


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory that the throw-away uid can work in: ``work/`` (its own) and ``stage/``."""
    base = Path(tempfile.mkdtemp(prefix="vlab-jailtest-"))
    base.chmod(0o755)
    (base / "work").mkdir()
    (base / "stage").mkdir()
    yield base
    shutil.rmtree(base)


def jail_spec(base: Path, **changes: object) -> JailSpec:
    """A jail working in :func:`place` ``base``: mode ``none`` unless ``changes`` say otherwise."""
    values: dict[str, object] = dict(
        mode="none",
        uid=None,
        address_space_mb=1024,
        cpu_seconds=30,
        file_mb=64,
        processes=64,
        workdir=str(base / "work"),
        readonly=student_readonly(),
        stage=str(base / "stage"),
    )
    values.update(changes)
    return JailSpec(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("secret") / "grading-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    old = os.environ.get("VLAB_GRADING_SECRET_FILE")
    os.environ["VLAB_GRADING_SECRET_FILE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VLAB_GRADING_SECRET_FILE", None)
    else:
        os.environ["VLAB_GRADING_SECRET_FILE"] = old


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Assignment:
    """The example lab, assigned into <tmp>/labs (student notebook + autograder/00.json)."""
    return assign(EXAMPLE_SOURCE, tmp_path_factory.mktemp("course") / "labs")


@pytest.fixture(scope="session")
def vm_marker() -> str:
    return f"vlab-test-vm-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def batch(
    lab: Assignment, secret_file: Path, vm_marker: str, batch_tmp: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SubmissionResult]:
    """Every synthetic submission graded in one batch: student name → result."""
    root = tmp_path_factory.mktemp("submissions")
    text = lab.student_text
    cases: dict[str, tuple[dict[str, str], list[tuple[str, str]]]] = {
        "correct": (s.CORRECT, []),
        "partly-wrong": ({**s.CORRECT, s.Q2: s.WALK_ADDED}, []),
        "untouched": ({}, []),
        "syntax-error": ({**s.CORRECT, s.Q1: s.SYNTAX_ERROR}, []),
        "infinite-loop": ({**s.CORRECT, s.Q1: s.FIB_HANGS}, [(s.Q1, s.INFINITE_LOOP)]),
        "memory-hog": (s.CORRECT, [(s.Q1, s.MEMORY_HOG)]),
        "fork-bomb": (s.CORRECT, [(s.Q1, s.FORK_BOMB)]),
        "reads-hidden": (s.CORRECT, [(s.Q1, s.steal_cell(str(lab.bundle_path), str(secret_file)))]),
        "monkeypatch": ({}, [(s.Q1, s.MONKEYPATCH)]),
        "tampered": ({**s.CORRECT, s.Q3_READONLY: s.TAMPERED_READONLY}, []),
        "leaves-vm": (s.CORRECT, [(s.Q1, s.vm_cell(vm_marker))]),
        "kernel-dies": (s.CORRECT, [(s.Q3, s.KERNEL_SUICIDE)]),
    }
    for number, (student, (answers, extra)) in enumerate(cases.items()):
        s.write(root, student, s.build_submission(text, answers, extra), "dir" if number % 2 else "flat")
    (root / "invalid.ipynb").write_text("this is not a notebook {")
    found, skipped = find_submissions(root, "00")
    assert not skipped
    jobs = make_jobs(found, Bundle.from_dict(lab.bundle))
    with private_tmpdir(batch_tmp):
        results = grade_all(jobs, workers=2, progress=False)
    return {r.student: r for r in results}


@pytest.fixture(scope="session")
def batch_tmp() -> Iterator[Path]:
    """The TMPDIR of the batch's graders, to check they leave nothing behind (other sessions share /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="vlab-test-tmp-"))
    path.chmod(0o711)  # the throw-away uid must reach its working directory inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def private_tmpdir(path: Path) -> Iterator[None]:
    old_env, old_cached = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(path), str(path)
    try:
        yield
    finally:
        tempfile.tempdir = old_cached
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
