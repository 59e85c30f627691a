"""Grading many submissions: find them, make jobs, run them on a local pool or a Dask cluster.

Every job is :func:`~vlab.grading.sandbox.grade_submission`, which runs the submission in a
supervisor process of its own, so the local pool is a pool of *threads* each waiting for one
supervisor, and a Dask worker runs the very same function. A job that fails in an unexpected way
becomes a ``grader-error`` result: one broken submission never stops the batch.

Submission layout (also in ``labs/README.md``): ``ROOT/<student>/NN-*.ipynb``,
``ROOT/<student>.ipynb`` or ``ROOT/<student>_NN-*.ipynb``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.grading.bundle import Bundle
from vlab.grading.results import SubmissionResult
from vlab.grading.sandbox import Job, empty_result, grade_submission, isolation_mode
from vlab.grading.seeds import valid_student_id

__all__ = ["find_submissions", "grade_all", "load_bundle", "make_jobs", "prepare_templates"]


def load_bundle(path: Path | str) -> Bundle:
    """Read an autograder bundle written by ``vlab assign``.

    :raises VlabError: if it is missing or not a bundle.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VlabError(
            "no autograder bundle",
            field="--bundle",
            value=str(path),
            fix="run `vlab assign labs/source/NN-*.ipynb` first, or pass --bundle PATH",
        ) from None
    except (OSError, ValueError) as exc:
        raise VlabError(
            "cannot read the autograder bundle", field="--bundle", value=str(path), detail=str(exc)
        ) from exc
    return Bundle.from_dict(data, where=str(path))


def _matches(name: str, lab: str) -> bool:
    return name.endswith(".ipynb") and (name.startswith(f"{lab}-") or name == f"{lab}.ipynb")


def find_submissions(root: Path | str, lab: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """(student, notebook) pairs under ``root``, and a list of what was skipped and why."""
    root = Path(root)
    if not root.is_dir():
        raise VlabError(
            "the submissions directory does not exist",
            field="SUBMISSIONS",
            value=str(root),
            fix="pass the directory that holds <student>/NN-*.ipynb or <student>.ipynb",
        )
    found: dict[str, Path] = {}
    skipped: list[str] = []

    def add(student: str, path: Path) -> None:
        if not valid_student_id(student):
            skipped.append(f"{path}: '{student}' is not a valid student id")
        elif student in found:
            skipped.append(f"{path}: a second submission of {student} (kept {found[student].name})")
        else:
            found[student] = path

    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            notebooks = sorted(p for p in entry.iterdir() if _matches(p.name, lab))
            if notebooks:
                add(entry.name, notebooks[0])
                skipped.extend(f"{p}: a second notebook of lab {lab} (kept {notebooks[0].name})" for p in notebooks[1:])
            else:
                skipped.append(f"{entry}: no {lab}-*.ipynb inside")
        elif entry.suffix == ".ipynb":
            student, sep, rest = entry.name.partition("_")
            if sep and _matches(rest, lab):
                add(student, entry)
            elif not sep:
                add(entry.stem, entry)
            else:
                skipped.append(f"{entry}: not a notebook of lab {lab}")
    return sorted(found.items()), skipped


def make_jobs(
    submissions: Iterable[tuple[str, Path]],
    bundle: Bundle,
    *,
    isolation: str = "auto",
    embed: bool = False,
) -> list[Job]:
    """One :class:`~vlab.grading.sandbox.Job` per submission.

    :param isolation: ``auto`` or ``none`` (see :func:`~vlab.grading.sandbox.isolation_mode`).
    :param embed: put the notebook's text into the job (for workers on other machines).
    :raises VlabError: if ``auto`` isolation is impossible on this host (checked once, before any job runs).
    """
    isolation_mode(isolation)
    jobs = []
    for student, path in submissions:
        text = None
        if embed:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""  # graded as 'invalid'
        jobs.append(Job(str(path), student, bundle, isolation, text))
    return jobs


def _failed(job: Job, why: str) -> SubmissionResult:
    result = empty_result(job)
    result.flag("grader-error")
    result.notes.append(why)
    return result


def _safe(job: Job) -> SubmissionResult:
    try:
        return grade_submission(job)
    except Exception as exc:  # the grader's own failure: recorded, the batch goes on
        return _failed(job, f"{type(exc).__name__}: {exc}")


def prepare_templates() -> str:
    """Build (or find) the default guest's snapshot template as the grader's user, before any submission runs.

    A graded notebook's VMs restore only from templates of the grader's (root's) cache, bound read-only into its
    sandbox, and never build one (:mod:`vlab.qemu.template`): building here, first, makes the default guest restore
    from the first submission on. Other hardware restores once its template was built the same way
    (``template.ensure(config, accel)`` as the grader's user), and boots cold until then.

    :returns: what was done, or why there is no template (grading goes on: VMs then boot cold).
    """
    from vlab.qemu import VM, template

    try:
        vm = VM()  # the default guest, with the accelerator a graded VM would get
        found, note = template.ensure(vm.config, vm.accel.kind)
    except VlabError as exc:  # no guest images, no QEMU, a cache we cannot write: nothing to restore from
        return f"no snapshot template ({exc.problem}): graded VMs boot cold"
    return f"snapshot template {found.key}: {note or 'up to date'}"


def grade_all(
    jobs: Sequence[Job],
    *,
    workers: int | None = None,
    dask: str | Any = None,
    progress: bool = True,
    on_result: Callable[[SubmissionResult], None] | None = None,
) -> list[SubmissionResult]:
    """Grade ``jobs`` and return their results (in the order of ``jobs``).

    :param workers: local parallelism (default: the number of CPUs).
    :param dask: a scheduler address (``tcp://host:8786``) or a ``distributed.Client``.
    :param progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    results: dict[int, SubmissionResult] = {}
    bar = tqdm(total=len(jobs), unit="submission", disable=not progress, desc="grading")

    def done(index: int, result: SubmissionResult) -> None:
        results[index] = result
        bar.set_postfix_str(f"{result.student}: {result.status}", refresh=False)
        bar.update(1)
        if on_result is not None:
            on_result(result)

    if jobs and dask is None:  # a Dask worker's host has its own cache, which its owner prepares
        prepared = prepare_templates()
        if progress:
            bar.write(prepared)
    try:
        if dask is not None:
            _run_dask(jobs, dask, done)
        else:
            with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
                futures = {pool.submit(_safe, job): i for i, job in enumerate(jobs)}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    finally:
        bar.close()
    return [results[i] for i in range(len(jobs))]


def _run_dask(jobs: Sequence[Job], dask: str | Any, done: Callable[[int, SubmissionResult], None]) -> None:
    from distributed import Client
    from distributed import as_completed as dask_completed

    client = Client(dask) if isinstance(dask, str) else dask  # type: ignore[no-untyped-call]
    try:
        futures = client.map(_safe, list(jobs), pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        for future in dask_completed(futures):  # type: ignore[no-untyped-call]
            i = index[future.key]
            try:
                result = future.result()
            except Exception as exc:  # a lost worker: recorded, the batch goes on
                result = _failed(jobs[i], f"dask: {type(exc).__name__}: {exc}")
            done(i, result)
    finally:
        if isinstance(dask, str):
            client.close()
