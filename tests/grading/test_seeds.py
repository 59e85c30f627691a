"""Per-student parameters without a secret: deterministic, per student/lab/course, and whom a notebook is for."""

from __future__ import annotations

import hashlib

import pytest

from vlab.errors import VlabError
from vlab.grading.seeds import SELF_STUDY, practice_seed, resolve_student, seed_for, setup


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLAB_STUDENT_ID", "JUPYTERHUB_USER"):
        monkeypatch.delenv(name, raising=False)


def test_seed_is_the_documented_sha256_and_32_bit() -> None:
    digest = hashlib.sha256(b"vlab-seed\0os-2026\x0003\0alice").digest()
    assert seed_for("alice", "03", "os-2026") == int.from_bytes(digest[:4], "big")
    assert 0 <= seed_for("alice", "03") < 2**32


def test_seeds_differ_per_student_lab_and_course() -> None:
    seeds = {seed_for(s, lab, c) for s in ("alice", "bob") for lab in ("01", "02") for c in ("x", "y")}
    assert len(seeds) == 8


def test_practice_seed_is_public_per_lab_and_not_a_students() -> None:
    assert practice_seed("04") == practice_seed("04") != practice_seed("02")
    assert practice_seed("04") not in {seed_for(s, "04") for s in ("self-study", "practice", "alice")}


@pytest.mark.parametrize(
    ("student", "lab", "course", "field"),
    [
        ("alice; rm -rf /", "03", "c", "student"),
        ("a" * 65, "03", "c", "student"),
        ("", "03", "c", "student"),
        (3, "03", "c", "student"),
        ("alice", "../03", "c", "lab"),
        ("alice", "03", "os 2026", "course"),
        ("alice", "03", "", "course"),
        ("alice", "03", "x\n", "course"),
    ],
)
def test_bad_ids_are_rejected_naming_the_field(student: object, lab: object, course: object, field: str) -> None:
    with pytest.raises(VlabError, match=field):
        seed_for(student, lab, course)  # type: ignore[arg-type]


def test_student_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_student() == (SELF_STUDY, "default")
    assert resolve_student("carol") == ("carol", "RELEASED_FOR")
    monkeypatch.setenv("JUPYTERHUB_USER", "bob")
    assert resolve_student("carol") == ("bob", "JUPYTERHUB_USER")
    monkeypatch.setenv("VLAB_STUDENT_ID", "alice")
    assert resolve_student("carol") == ("alice", "VLAB_STUDENT_ID")


def test_a_hostile_environment_id_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "$(reboot)")
    with pytest.raises(VlabError, match="JUPYTERHUB_USER"):
        resolve_student()


def params_for(seed: int) -> dict[str, int]:
    return {"n": seed % 1000}


def test_setup_gives_the_students_and_the_practice_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    got = setup("04", params_for, course="os-2026", released_for="carol")
    assert (got.student, got.source, got.course) == ("carol", "RELEASED_FOR", "os-2026")
    assert got.params == params_for(seed_for("carol", "04", "os-2026"))
    assert got.practice == params_for(practice_seed("04"))
    assert "the grader uses exactly these" in repr(got) and "self-study instance" not in repr(got)
    assert "PRACTICE" in got._repr_html_()


def test_setup_without_a_student_says_so() -> None:
    got = setup("04", params_for)
    assert got.student == SELF_STUDY and "does not know who you are" in got.text()


def test_setup_rejects_a_params_for_that_returns_no_dict() -> None:
    with pytest.raises(VlabError, match="params_for"):
        setup("04", lambda seed: [seed])  # type: ignore[arg-type,return-value]
    with pytest.raises(VlabError, match="params_for"):
        setup("04", "not a function")  # type: ignore[arg-type]
