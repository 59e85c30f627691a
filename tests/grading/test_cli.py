"""The command line: vlab assign (and --check) and vlab grade."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.grading import grading_submissions as s
from tests.grading.grading_submissions import EXAMPLE_SOURCE
from vlab.cli import main
from vlab.grading.assign import Assignment


def test_assign_writes_both_files_and_check_detects_staleness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source" / "00-example.ipynb"
    source.parent.mkdir()
    shutil.copy(EXAMPLE_SOURCE, source)
    assert main(["assign", "--check", str(source)]) == 1
    assert main(["assign", str(source)]) == 0
    assert (tmp_path / "00-example.ipynb").exists() and (tmp_path / "autograder" / "00.json").exists()
    assert main(["assign", "--check", str(source)]) == 0
    source.write_text(source.read_text().replace("a tiny example lab", "a small example lab"))
    assert main(["assign", "--check", str(source)]) == 1
    assert "stale: " in capsys.readouterr().out


def test_grade_writes_gradebook_and_feedback(
    lab: Assignment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subs = tmp_path / "subs"
    s.write(subs, "ann", s.build_submission(lab.student_text, s.CORRECT, []), "flat")
    (subs / "ben_00-example.ipynb").write_text(lab.student_text)
    out = tmp_path / "out" / "gradebook.csv"
    code = main(
        [
            "grade",
            str(subs),
            "--lab",
            "00",
            "--bundle",
            str(lab.bundle_path),
            "--workers",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    with out.open() as handle:
        rows = [(r["student"], r["total"], r["status"]) for r in csv.DictReader(handle)]
    assert rows == [("ann", "8", "ok"), ("ben", "0", "unanswered")]
    assert json.loads((out.parent / "feedback" / "ann.json").read_text())["total"] == 8
    printed = capsys.readouterr().out
    assert "2 submissions, mean 4 / 8" in printed


def test_grade_errors_name_the_option(lab: Assignment, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grade", str(tmp_path), "--lab", "00", "--bundle", str(tmp_path / "none.json")]) == 1
    assert "--bundle" in capsys.readouterr().err
    assert main(["grade", str(tmp_path), "--lab", "03", "--bundle", str(lab.bundle_path)]) == 1
    assert "the bundle is for lab 00" in capsys.readouterr().err
    assert main(["grade", str(tmp_path), "--lab", "00", "--bundle", str(lab.bundle_path)]) == 1
    assert "no submissions found" in capsys.readouterr().err


def test_grade_sends_jobs_to_a_dask_scheduler_by_address(lab: Assignment, tmp_path: Path) -> None:
    import dask
    import distributed

    dist: Any = distributed  # LocalCluster is untyped

    dask.config.set({"temporary-directory": str(tmp_path)})  # Dask's scratch space, else /tmp/dask-scratch-space

    subs = tmp_path / "subs"
    s.write(subs, "dora", s.build_submission(lab.student_text, s.CORRECT, []))
    out = tmp_path / "gradebook.csv"
    with dist.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                           local_directory=str(tmp_path)) as cluster:
        code = main(
            [
                "grade",
                str(subs),
                "--lab",
                "00",
                "--bundle",
                str(lab.bundle_path),
                "--out",
                str(out),
                "--dask",
                cluster.scheduler_address,
                "--no-progress",
            ]
        )
    assert code == 0
    assert out.read_text().splitlines()[1] == "dora,00,3,3,2,8,8,ok,root"


def test_no_isolation_is_explicit_and_recorded(
    lab: Assignment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subs = tmp_path / "subs"
    s.write(subs, "cay", s.build_submission(lab.student_text, s.CORRECT, []), "flat")
    out = tmp_path / "gradebook.csv"
    argv = ["grade", str(subs), "--lab", "00", "--bundle", str(lab.bundle_path), "--out", str(out), "--no-progress"]
    assert main([*argv, "--no-isolation"]) == 0
    assert "--no-isolation: student code runs with your rights" in capsys.readouterr().err
    with out.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["total"], row["status"], row["isolation"]) == ("8", "ok", "none")
    assert json.loads((tmp_path / "gradebook-summary.json").read_text())["isolation"] == ["none"]
