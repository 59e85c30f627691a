"""Lab 04 notebook: the committed student version is current, grading gives 100 % / 0 %, and the checks
accept every correct answer (whatever the seed) while still naming the misconceptions."""

from __future__ import annotations

from pathlib import Path

from vlab.grading.testing import lab_checks, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "04-scheduling.ipynb"


def test_q4_accepts_the_right_remainder_when_the_vm_takes_half_the_host() -> None:
    # student "s365" (self-study secret) got host (8, 8, 200) and a VM of (4, 4, 100): what is left equals
    # what the VM takes, and the "that is what the VM takes" hint used to fail the correct answer
    namespace, checks = lab_checks(SOURCE)
    params = dict(namespace["params_for"](1), example_host=[8, 8, 200], example_need=[4, 4, 100])
    result = run_check(checks["remaining_after_the_example"], params, example_remaining=lambda: (4, 4, 100))
    assert result.passed, result.message


def test_q4_still_names_the_misconceptions() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = dict(namespace["params_for"](1), example_host=[8, 16, 400], example_need=[2, 4, 100])
    check = checks["remaining_after_the_example"]
    took = run_check(check, params, example_remaining=lambda: (2, 4, 100))
    assert not took.passed and "what the VM takes" in took.message
    slip = run_check(check, params, example_remaining=lambda: (8, 12, 300))
    assert not slip.passed and "CPUs were not subtracted" in slip.message
    assert run_check(check, params, example_remaining=lambda: (6, 12, 300)).passed
