"""Per-student seeds: deterministic, keyed by the instructor secret, different per student and lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.grading.seeds import SELF_STUDY_SECRET, instructor_secret, seed_for, student_id, student_key


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("VLAB_STUDENT_ID", "VLAB_STUDENT_KEY", "VLAB_GRADING_SECRET", "VLAB_GRADING_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/vlab/grading-secret


def test_seed_is_deterministic_and_32_bit() -> None:
    assert seed_for("alice", "03", secret="s") == seed_for("alice", "03", secret="s")
    assert 0 <= seed_for("alice", "03", secret="s") < 2**32


def test_seeds_differ_per_student_lab_and_secret() -> None:
    seeds = {seed_for(s, lab, secret=k) for s in ("alice", "bob") for lab in ("01", "02") for k in ("x", "y")}
    assert len(seeds) == 8


def test_student_key_alone_reproduces_the_graders_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    graders = seed_for("alice", "03", secret="course-secret")
    monkeypatch.setenv("VLAB_STUDENT_KEY", student_key("alice", "course-secret"))
    assert seed_for("alice", "03") == graders  # no secret in the student's environment


def test_grader_environment_wins_over_the_notebooks_student_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_STUDENT_ID", "alice")
    assert student_id("bob") == "alice"
    assert seed_for("bob", "03", secret="s") == seed_for("alice", "03", secret="s")


def test_secret_sources_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert instructor_secret() == SELF_STUDY_SECRET
    default_file = tmp_path / ".config" / "vlab" / "grading-secret"
    default_file.parent.mkdir(parents=True)
    default_file.write_text("from-home\n")
    assert instructor_secret() == "from-home"
    named = tmp_path / "named"
    named.write_text("from-file\n")
    monkeypatch.setenv("VLAB_GRADING_SECRET_FILE", str(named))
    assert instructor_secret() == "from-file"
    monkeypatch.setenv("VLAB_GRADING_SECRET", "from-env")
    assert instructor_secret() == "from-env"


def test_unreadable_secret_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLAB_GRADING_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(VlabError, match="VLAB_GRADING_SECRET_FILE"):
        instructor_secret()


def test_bad_student_id_is_rejected() -> None:
    with pytest.raises(VlabError, match="STUDENT_ID"):
        seed_for("alice; rm -rf /", "03")
