"""Finding submissions, and the same jobs on a Dask cluster (a real LocalCluster)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.grading import grading_submissions as s
from vlab.errors import VlabError
from vlab.grading.assign import Assignment
from vlab.grading.bundle import Bundle
from vlab.grading.runner import find_submissions, grade_all, load_bundle, make_jobs


def test_submission_layouts_and_what_is_skipped(tmp_path: Path) -> None:
    for path in [
        "alice/00-example.ipynb",
        "bob.ipynb",
        "carol_00-example.ipynb",
        "dave_07-other.ipynb",
        "erin/notes.txt",
        "bad id.ipynb",
        "frank/00-a.ipynb",
        "frank/00-b.ipynb",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    found, skipped = find_submissions(tmp_path, "00")
    assert [(student, p.relative_to(tmp_path).as_posix()) for student, p in found] == [
        ("alice", "alice/00-example.ipynb"),
        ("bob", "bob.ipynb"),
        ("carol", "carol_00-example.ipynb"),
        ("frank", "frank/00-a.ipynb"),
    ]
    assert len(skipped) == 4 and any("'bad id'" in line for line in skipped)


def test_missing_directory_and_bundle_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(VlabError, match="SUBMISSIONS"):
        find_submissions(tmp_path / "nope", "00")
    with pytest.raises(VlabError, match="vlab assign"):
        load_bundle(tmp_path / "00.json")


def test_dask_cluster_grades_the_same_and_survives_a_broken_job(lab: Assignment, tmp_path: Path) -> None:
    import dask
    import distributed

    dist: Any = distributed  # LocalCluster and Client are untyped

    dask.config.set({"temporary-directory": str(tmp_path)})  # Dask's scratch space, else /tmp/dask-scratch-space

    good = s.write(tmp_path, "good", s.build_submission(lab.student_text, s.CORRECT, []))
    wrong = s.write(tmp_path, "wrong", s.build_submission(lab.student_text, {**s.CORRECT, s.Q2: s.WALK_ADDED}, []))
    broken_bundle = copy.deepcopy(lab.bundle)
    broken_bundle["check_sources"].append(
        {"cell": "x", "question": "q1", "hidden": True, "source": "raise RuntimeError('a broken bundle')"}
    )
    jobs = make_jobs([("good", good), ("wrong", wrong)], Bundle.from_dict(lab.bundle), embed=True)
    jobs += make_jobs([("broken", good)], Bundle.from_dict(broken_bundle), embed=True)
    with (
        dist.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                          local_directory=str(tmp_path)) as cluster,
        dist.Client(cluster) as client,
    ):
        results = grade_all(jobs, dask=client, progress=False)
    assert [(r.student, r.total, r.status) for r in results] == [
        ("good", 8, "ok"),
        ("wrong", 5, "ok"),
        ("broken", 0, "grader-error"),
    ]
    assert "a broken bundle" in results[2].notes[0]
