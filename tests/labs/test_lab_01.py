"""Lab 01's multiple-choice questions: shuffled per student, so a letter or a set copied from another student (or
from an old answer key) is graded wrong for most; the checks name the misconception behind a wrong pick."""

from __future__ import annotations

from pathlib import Path

from vlab.grading.testing import lab_checks, run_check, student_params

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "01-create-vm.ipynb"
NAMESPACE, CHECKS = lab_checks(SOURCE)
STUDENTS = [student_params(SOURCE, f"student{n}") for n in range(8)]


def test_q4_the_right_letter_is_per_student_and_a_wrong_pick_gets_its_hint() -> None:
    choice, check = NAMESPACE["TCG_VS_KVM"], CHECKS["tcg_versus_kvm"]
    letters = [choice.letter(0, p) for p in STUDENTS]
    assert len(set(letters)) > 1
    for params, letter in zip(STUDENTS, letters, strict=True):
        assert run_check(check, params, tcg_answer=letter).passed
    assert any(not run_check(check, p, tcg_answer="b").passed for p in STUDENTS)  # the old key's letter
    wrong = run_check(check, STUDENTS[0], tcg_answer=choice.letter(2, STUDENTS[0]))
    assert not wrong.passed and "QEMU still runs" in wrong.message


def test_q5_the_true_set_is_per_student_and_a_false_statement_is_named() -> None:
    choice, check = NAMESPACE["TEXTBOOK"], CHECKS["true_statements"]
    for params in STUDENTS:
        right = {choice.letter(2, params), choice.letter(3, params)}
        assert run_check(check, params, textbook_true=right).passed
        assert not run_check(check, params, textbook_true={choice.letter(2, params)}).passed
    assert any(not run_check(check, p, textbook_true={"c", "d"}).passed for p in STUDENTS)  # the old key
    params = STUDENTS[1]
    wrong = run_check(check, params, textbook_true={choice.letter(2, params), choice.letter(4, params)})
    assert not wrong.passed and "reservations come off the top" in wrong.message
