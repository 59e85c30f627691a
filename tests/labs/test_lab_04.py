"""Lab 04's checks: every right answer passes whatever the seed, each misconception gets its own hint, and a
letter copied from another student is worth nothing (the points and the 100 % / 0 % are in test_labs.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vlab.grading.testing import lab_checks, run_check, student_params

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "04-scheduling.ipynb"
NAMESPACE, CHECKS = lab_checks(SOURCE)


def _params(student: str) -> dict[str, Any]:
    return student_params(SOURCE, student)


def test_q4_accepts_the_right_remainder_when_the_vm_takes_half_the_host() -> None:
    # a VM taking half the host leaves exactly what it takes: the "that is what the VM takes" hint must not fire
    params = dict(_params("s1"), example_host=[8, 8, 200], example_need=[4, 4, 100])
    result = run_check(CHECKS["remaining_on_your_example"], params, example_remaining=lambda h, n: (4, 4, 100)
                       if (h, n) == ([8, 8, 200], [4, 4, 100]) else tuple(a - b for a, b in zip(h, n, strict=True)))
    assert result.passed, result.message


def test_q4_names_the_misconceptions() -> None:
    params = dict(_params("s1"), example_host=[8, 16, 400], example_need=[2, 4, 100])
    check = CHECKS["remaining_on_your_example"]
    took = run_check(check, params, example_remaining=lambda h, n: tuple(n))
    assert not took.passed and "what the VM takes" in took.message
    slip = run_check(check, params, example_remaining=lambda h, n: (h[0], h[1] - n[1], h[2] - n[2]))
    assert not slip.passed and "CPUs were not subtracted" in slip.message


@pytest.mark.parametrize("question", ["lhp", "order"])
def test_choice_letters_are_per_student_and_a_copied_letter_fails_someone(question: str) -> None:
    choice, right, answer, check = {
        "lhp": (NAMESPACE["LHP"], 1, "lhp_answer", CHECKS["lock_holder_preemption_explained"]),
        "order": (NAMESPACE["ORDER"], 0, "order_answer", CHECKS["order_of_resources_for_one_vm"]),
    }[question]
    students = [_params(f"student{n}") for n in range(12)]
    letters = [choice.letter(right, p) for p in students]
    assert len(set(letters)) > 1, "the right letter must differ between students"
    for params, letter in zip(students, letters, strict=True):
        assert run_check(check, params, **{answer: letter}).passed
        assert not run_check(check, params, **{answer: "z"}).passed
    copied = letters[0]
    assert any(not run_check(check, p, **{answer: copied}).passed for p in students[1:])


def test_q3_wrong_options_name_their_misconception() -> None:
    params, choice = _params("s2"), NAMESPACE["LHP"]
    check = CHECKS["lock_holder_preemption_explained"]
    assert "never traps" in run_check(check, params, lhp_answer=choice.letter(2, params)).message
    assert "who runs, not how many" in run_check(check, params, lhp_answer=choice.letter(0, params)).message


def _ffd(key: Callable[[list[float], list[float]], float]) -> Callable[..., list[int]]:
    def ffd(vms: list[list[float]], capacity: list[float]) -> list[int]:
        order = sorted(range(len(vms)), key=lambda i: key(vms[i], capacity), reverse=True)
        free: list[list[float]] = []
        placement = [0] * len(vms)
        for i in order:
            host = next((h for h, left in enumerate(free) if all(d <= f + 1e-9 for d, f in zip(vms[i], left,
                                                                                                 strict=True))), None)
            if host is None:
                free.append(list(capacity))
                host = len(free) - 1
            free[host] = [f - d for f, d in zip(free[host], vms[i], strict=True)]
            placement[i] = host
        return placement

    return ffd


def test_q5_right_ffd_passes_and_sorting_by_cpu_alone_is_named() -> None:
    params = _params("s3")
    right = _ffd(lambda vm, cap: max(d / c for d, c in zip(vm, cap, strict=True)))
    by_cpu = _ffd(lambda vm, cap: vm[0])
    assert run_check(CHECKS["exact_ffd_on_hidden_lists"], params, ffd=right).passed
    assert run_check(CHECKS["exact_ffd_on_your_list"], params, ffd=right).passed
    wrong = run_check(CHECKS["exact_ffd_on_hidden_lists"], params, ffd=by_cpu)
    assert not wrong.passed and "CPU alone" in wrong.message


def test_q6_lower_bound_misconceptions_are_named() -> None:
    params = _params("s2")  # a student whose lists tell the two mistakes apart (they can coincide)

    def hosts_needed(how: str) -> Callable[..., dict[str, int]]:
        def answer(demands: list[list[float]], capacity: list[float]) -> dict[str, int]:
            totals = [sum(d[k] for d in demands) / capacity[k] for k in range(3)]
            bound = {"max": math.ceil(max(totals) - 1e-9), "mean": math.ceil(sum(totals) / 3),
                     "floor": math.floor(max(totals))}[how]
            return {"ffd": 0, "article": 0, "lower_bound": bound}

        return answer

    check = CHECKS["lower_bound_on_your_lists"]
    assert run_check(check, params, hosts_needed=hosts_needed("max")).passed
    assert "not the average" in run_check(check, params, hosts_needed=hosts_needed("mean")).message
    assert "round up" in run_check(check, params, hosts_needed=hosts_needed("floor")).message


def test_q7_graded_on_other_loops_names_wall_for_cpu() -> None:
    params = _params("s5")
    check = CHECKS["model_on_other_loops"]
    assert run_check(check, params, throttled_seconds=lambda w, c, q: max(w, c / q)).passed
    wrong = run_check(check, params, throttled_seconds=lambda w, c, q: w / q)
    assert not wrong.passed and "not `wall`" in wrong.message


def test_q1_missing_re_split_is_named() -> None:
    def capped_only(weights: list[int], caps: list[float], available: float) -> list[float]:
        return [min(available * w / sum(weights), c or 1) for w, c in zip(weights, caps, strict=True)]

    result = run_check(CHECKS["shares_on_your_own_inputs"], _params("s6"), entitled_shares=capped_only)
    assert not result.passed and "re-split" in result.message


def test_public_checks_pass_on_the_practice_instance_with_right_answers() -> None:
    params = _params("s7")
    assert run_check(CHECKS["model_behaves_like_a_quota"], params,
                     throttled_seconds=lambda w, c, q: max(w, c / q)).passed
    assert not run_check(CHECKS["model_behaves_like_a_quota"], params, throttled_seconds=lambda w, c, q: w * q).passed
