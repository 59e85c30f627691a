"""Lab 02's checks: the property letter is per student, and the model, divergence and classification checks name
the misconception (the points and the 100 % / 0 % are in test_labs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vlab.errors import VlabError
from vlab.grading.assign import build
from vlab.grading.testing import (
    grade_notebook,
    lab_checks,
    locked_helpers,
    run_check,
    solution_notebook_text,
    student_params,
)
from vlab.labs import trap_emulate as lab
from vlab.toyvmm import handlers as vmm_default
from vlab.toyvmm.devices import handle_hypercall
from vlab.toyvmm.machine import Machine, boots_refused

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "02-trap-and-emulate.ipynb"
NAMESPACE, CHECKS = lab_checks(SOURCE)


def _params(student: str) -> dict[str, Any]:
    return student_params(SOURCE, student)


def _locked_helpers(**answers: Any) -> dict[str, Any]:
    return locked_helpers(SOURCE, "predicted", lab=lab, **answers)


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

    def graded(model: Any) -> Any:
        return run_check(check, params, predicted=_locked_helpers(exits_to_print=model)["predicted"])

    assert graded(right).passed
    assert "first loads the line-status register" in graded(one_per_byte).message
    assert not graded(copied).passed


def test_a_model_that_measures_instead_of_predicting_is_refused() -> None:
    params, check = _params("s1"), CHECKS["model_on_other_messages"]

    def measures(message: str, how: str) -> int:
        total = sum(lab.run_guest(lab.print_program(message, how)).exits.values())
        return total - sum(lab.run_guest(lab.print_program("", how)).exits.values())

    assert measures("ab", "uart") == 4  # outside the model's context it measures right
    result = run_check(check, params, predicted=_locked_helpers(exits_to_print=measures)["predicted"])
    assert not result.passed and "is a model" in result.message, result.message
    with boots_refused("a model"), pytest.raises(VlabError, match="no guest may boot"):
        Machine().add_guest("hello")  # any path to a guest, not just run_guest


# Handlers that only hand the exit back to the VMM's own code, however they reach it
DELEGATING = {
    "handle_csr": "def handle_csr(exit):\n    vmm_default.csr_access(exit)\n",
    "handle_wfi": "handle_wfi = vmm_default.wfi\n",
    "handle_uart_read": "def handle_uart_read(exit):\n    from vlab.toyvmm.handlers import mmio_read\n"
                        "    mmio_read(exit)\n",
    "handle_uart_write": "handle_uart_write = vmm_default.DEFAULT_HANDLERS[ExitReason.MMIO_WRITE]\n",
    "handle_hypercall": "def handle_hypercall(exit):\n    vmm_default.DEFAULT_HANDLERS[ExitReason.HYPERCALL](exit)\n",
}


def test_handlers_that_delegate_to_the_vmm_score_nothing_and_are_told_why(tmp_path: Path) -> None:
    """The real grader, on a notebook whose q1–q4 answers call the VMM's default handlers (the audit's
    attack: 7 of 15 points) and whose q5 model measures."""
    notebook = json.loads(solution_notebook_text(SOURCE))
    for cell in notebook["cells"]:
        text = "".join(cell["source"])
        found = re.match(r"# vlab: solution (q[1-5])\n", text)
        if found and found.group(1) != "q5":
            names = re.findall(r"^def (\w+)", text, re.M)
            cell["source"] = found.group(0) + "from vlab.toyvmm.exits import ExitReason\n" + "".join(
                DELEGATING[name] for name in names)
        elif found:
            cell["source"] = found.group(0) + "def exits_to_print(message, how):\n" \
                "    return exits_printing(message, how)\n"
    submission = tmp_path / "delegating.ipynb"
    submission.write_text(json.dumps(notebook))
    result = grade_notebook(submission, build(SOURCE).bundle, "delegator")
    scores = {q: s["score"] for q, s in result["questions"].items()}
    assert all(scores[q] == 0 for q in ("q1", "q2", "q3", "q4", "q5")), scores
    assert scores["q6"] > 0  # the rest of the notebook is graded as usual
    messages = [c["message"] for c in result["checks"] if c["question"] in ("q1", "q2", "q3", "q4")]
    assert any("the part you write" in m for m in messages), messages


def test_the_solutions_own_delegations_are_still_served() -> None:
    """What the questions leave to the default (the counters in q1, other hypercalls in q4) still works with
    the reasons withheld; a handler that passes the withheld part on is refused."""
    run = lab.run_guest("hello", {"HYPERCALL": handle_hypercall}, ms=10)  # SHUTDOWN stays the default's
    assert run.state == "halted"
    with pytest.raises(VlabError, match="the part you write"):
        lab.run_guest("hello", {"MMIO_WRITE": vmm_default.mmio_write}, ms=10)


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
