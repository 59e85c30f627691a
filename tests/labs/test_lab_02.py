"""Lab 02's checks: the property letter is per student, and the model, divergence and classification checks name
the misconception (the points and the 100 % / 0 % are in test_labs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlab.grading.testing import lab_checks, run_check, student_params
from vlab.labs import trap_emulate as lab

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "02-trap-and-emulate.ipynb"
NAMESPACE, CHECKS = lab_checks(SOURCE)


def _params(student: str) -> dict[str, Any]:
    return student_params(SOURCE, student)


def test_the_property_letter_is_per_student() -> None:
    choice, check = NAMESPACE["PROPERTY"], CHECKS["names_the_property"]
    students = [_params(f"student{n}") for n in range(10)]
    letters = [choice.letter(0, p) for p in students]
    assert len(set(letters)) > 1
    for params, letter in zip(students, letters, strict=True):
        assert run_check(check, params, property_answer=letter).passed
    assert any(not run_check(check, p, property_answer=letters[0]).passed for p in students[1:])
    params = students[0]
    assert "nothing got slower" in run_check(check, params, property_answer=choice.letter(2, params)).message


def test_q5_model_is_graded_on_other_messages_and_names_one_exit_per_byte() -> None:
    params, check = _params("s1"), CHECKS["model_on_other_messages"]

    def right(message: str, how: str) -> int:
        return 2 * len(message.encode()) if how == "uart" else 1

    def one_per_byte(message: str, how: str) -> int:
        return len(message.encode()) if how == "uart" else 1

    def copied(message: str, how: str) -> int:  # the figure printed for the student's own message, copied
        return right(params["message"], how)

    assert run_check(check, params, exits_to_print=right).passed
    assert "first loads the line-status register" in run_check(check, params, exits_to_print=one_per_byte).message
    assert not run_check(check, params, exits_to_print=copied).passed


def test_q8_classification_names_the_misconceptions() -> None:
    params, check = _params("s2"), CHECKS["sensitive_versus_innocuous"]
    names = sorted(lab.X86_INSTRUCTIONS)

    def innocuous_unless_trapping(names: list[str]) -> dict[str, str]:
        return {n: "privileged" if lab.x86_trap_vector(lab.X86_INSTRUCTIONS[n]) is not None else "innocuous"
                for n in names}

    result = run_check(check, dict(params, classify=names), classify=innocuous_unless_trapping)
    assert not result.passed and "is sensitive" in result.message
    privileged = run_check(CHECKS["privileged_on_your_instructions"], params,
                           classify=lambda names: dict.fromkeys(names, "sensitive"))
    assert not privileged.passed and "measure it" in privileged.message
