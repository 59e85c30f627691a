"""Lab 03's checks: the shadow fill and the 2-D walk are judged by guests that run on them, the balloon check
judges a prediction at the size the balloon really reached, models that measure are refused, and each misconception
is named (the points and the 100 % / 0 % are in test_labs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vlab.grading.testing import lab_checks, locked_helpers, run_check

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "03-memory.ipynb"


# a 256 MiB guest showing 218 MiB; on a busy host the balloon stopped at 160 MiB instead of the 144 asked for
STALLED = [
    {"target_mib": 256, "balloon_mib": 256, "guest_total_mib": 218, "guest_free_mib": 200, "host_rss_mib": 300},
    {"target_mib": 200, "balloon_mib": 200, "guest_total_mib": 162, "guest_free_mib": 150, "host_rss_mib": 250},
    {"target_mib": 144, "balloon_mib": 160, "guest_total_mib": 122, "guest_free_mib": 110, "host_rss_mib": 210},
]


def test_q7_judges_the_prediction_at_the_size_the_balloon_reached() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)
    result = run_check(
        checks["prediction_matches_the_guest"],
        params,
        balloon_rows=STALLED,
        predicted_total=lambda before, configured, target: before - (configured - target),
    )
    assert result.passed, result.message


def test_q7_still_names_the_misconceptions() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)
    check = checks["prediction_matches_the_guest"]
    configured = run_check(
        check, params, balloon_rows=STALLED, predicted_total=lambda before, configured, target: target
    )
    assert not configured.passed and "never shows all of the configured memory" in configured.message
    unchanged = run_check(
        check, params, balloon_rows=STALLED, predicted_total=lambda before, configured, target: before
    )
    assert not unchanged.passed and "does shrink" in unchanged.message


def test_q4_the_formula_passes_and_a_model_that_measures_is_refused() -> None:
    """A model that runs the VMM and reads its counters would answer any (n, m): the checks call it where no
    guest may boot."""
    from vlab.labs import memory as lab

    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)

    def formula(n: int, m: int) -> int:
        return (n + 1) * (m + 1) - 1

    def measures(n: int, m: int) -> int:
        run = lab.measure_paging(lab.paging_program(16, 4, update=False, levels=n), "nested",
                                 guest_levels=n, nested_levels=m)
        return int(run.nested_refs // run.nested_walks)

    assert measures(3, 3) == formula(3, 3)  # outside the checks it measures right
    for name in ("matches_the_vmm_counters", "other_depths"):
        for model, passes in ((formula, True), (measures, False)):
            helper = locked_helpers(SOURCE, "predicted_refs", lab=lab, two_d_refs=model)["predicted_refs"]
            result = run_check(checks[name], params, predicted_refs=helper)
            assert result.passed is passes, (name, model.__name__, result.message)
            assert passes or "is a model" in result.message, result.message


def test_q6_winners_copied_from_the_printout_fail_under_other_costs() -> None:
    """The winners the notebook prints for the student's own costs are the same for everyone: the hidden check
    also asks under costs where they flip."""
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](3)

    def paging_cycles(run: dict[str, Any], exit_cycles: int, ref_cycles: int) -> int:
        if run["mode"] == "shadow":
            refs = run["guest_pte_reads"] + run["tlb_fills"] * run["guest_levels"]
            return int(run["shadow_fills"] * exit_cycles + refs * ref_cycles)
        return int(run["nested_refs"] * ref_cycles)

    def right(runs: dict[Any, Any], exit_cycles: int, ref_cycles: int) -> dict[str, str]:
        cost = {key: paging_cycles(run, exit_cycles, ref_cycles) for key, run in runs.items()}
        return {w: min(("shadow", "nested"), key=lambda m: cost[w, m]) for w, _ in runs}

    def copied(runs: dict[Any, Any], exit_cycles: int, ref_cycles: int) -> dict[str, str]:
        return {"update-heavy": "nested", "tlb-heavy": "shadow"}

    check = checks["each_mode_wins_one_workload"]
    assert run_check(check, params, winners=right, paging_cycles=paging_cycles).passed
    result = run_check(check, params, winners=copied, paging_cycles=paging_cycles)
    assert not result.passed and "cycles per exit" in result.message, result.message


def test_q8_a_model_that_runs_the_sharing_experiment_is_refused() -> None:
    from vlab.labs import memory as lab

    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)

    def measured_after_sharing(n: int, fill: int) -> int:
        return int(lab.sharing_experiment(n, fill, 1, repeats=1).frames_shared)

    def after_writes(n: int, fill: int, written: int) -> int:
        return int(lab.sharing_experiment(n, fill, written, repeats=1).frames_after_writes)

    assert measured_after_sharing(3, 8) == 8 + 2  # outside the checks, measuring gives the right figure
    helper = locked_helpers(SOURCE, "predicted_frames", lab=lab, frames_after_sharing=measured_after_sharing,
                            frames_after_writes=after_writes)["predicted_frames"]
    result = run_check(checks["predictions_match_the_vmm"], params, predicted_frames=helper)
    assert not result.passed and "are models" in result.message, result.message


def test_q1_feedback_shows_addresses_in_hex_like_the_question() -> None:
    namespace, checks = lab_checks(SOURCE)
    params = namespace["params_for"](1)
    result = run_check(checks["walks_your_tables"], params, walk_sv39=lambda memory, satp, va: None)
    assert not result.passed
    shown = result.message.split("(expected ", 1)[1]
    assert shown.startswith("0x") or shown.startswith("None, got 0x"), result.message


# ---------------------------------------------------------------- q2: the shadow fill, q3: the 2-D walk, q5: costs

_MASK = (1 << 44) - 1


def _fill(*, frame_off: int = 0, flags: Any = None, present: bool = True, offset_bits: int | None = None,
          pte_address: int | None = None, reread: bool = False) -> Any:
    """A shadow fill with one of the misconceptions the checks name (all defaults: right)."""
    from vlab.toyvmm.isa import CSR

    def handle_shadow_fill(exit: Any, ptes: Any) -> None:
        satp, va = exit.vcpu.csrs[CSR.SATP], exit.addr
        table = (satp & _MASK) << 12
        for level in (2, 1, 0):
            shift = 12 + 9 * level
            address = table + ((va >> shift) & 511) * 8
            pte = ptes.get(address, 0)
            if reread:
                ptes.get(address, 0)
            if not pte & 1 and present:
                return
            if pte & 0b1010:
                bits = shift if offset_bits is None else offset_bits
                gpa = (((pte >> 10) & _MASK) << 12) | (va & ((1 << bits) - 1))
                exit.vcpu.shadow[va >> 12] = ((gpa >> 12) + frame_off, pte & 0xFF if flags is None else flags(pte),
                                              address if pte_address is None else pte_address)
                return
            table = ((pte >> 10) & _MASK) << 12
    return handle_shadow_fill


def _run_q2(check: str, **mistake: Any) -> Any:
    from vlab.labs import memory as lab

    namespace, checks = lab_checks(SOURCE)
    helper = locked_helpers(SOURCE, "drive_shadow", lab=lab, handle_shadow_fill=_fill(**mistake))["drive_shadow"]
    return run_check(checks[check], namespace["params_for"](5), drive_shadow=helper)


@pytest.mark.parametrize("check", ["fills_the_practice_test_guest", "fills_your_test_guests",
                                   "a_paging_guest_runs_on_your_fill"])
def test_q2_a_right_fill_passes(check: str) -> None:
    result = _run_q2(check)
    assert result.passed, result.message


@pytest.mark.parametrize(("mistake", "named"), [
    ({"frame_off": 1}, "check the page number"),  # every page off by one: even its code is wrong
    ({"flags": lambda pte: 0xDF}, "did not finish"),  # U on every page: the kernel may not run its own code
    ({"flags": lambda pte: pte & 0xFF | 0b110}, "read-only page took a store"),
    ({"present": False}, "V = 0 was filled"),
    ({"offset_bits": 12}, "superpage"),
    ({"pte_address": 0x80012000}, "A and D bits landed wrong"),
    ({"flags": lambda pte: pte & 0xFF | 0xC0}, "A and D bits landed wrong"),
    ({"reread": True}, "guest PTEs through ptes"),
    ({"frame_off": 1 << 20}, "not its own"),
])
def test_q2_names_each_wrong_fill(mistake: dict[str, Any], named: str) -> None:
    result = _run_q2("fills_the_practice_test_guest", **mistake)
    assert not result.passed and named in result.message, result.message
    assert not _run_q2("fills_your_test_guests", **mistake).passed


def _walk_2d(*, translate_data: bool = True, twice: bool = False) -> Any:
    def walk_2d(host: Any, satp: int, va: int) -> int | None:
        table = (satp & _MASK) << 12
        for level in range((satp >> 60) - 6, -1, -1):
            shift = 12 + 9 * level
            hpa = host.host_walk(table + ((va >> shift) & 511) * 8)
            if twice:
                hpa = host.host_walk(table + ((va >> shift) & 511) * 8)
            pte = 0 if hpa is None else host.read(hpa)
            if not pte & 1:
                return None
            if pte & 0b1010:
                gpa = (((pte >> 10) & _MASK) << 12) | (va & ((1 << shift) - 1))
                return host.host_walk(gpa) if translate_data else gpa
            table = ((pte >> 10) & _MASK) << 12
        return None
    return walk_2d


def _run_q3(check: str, **mistake: Any) -> Any:
    from vlab.labs import memory as lab

    namespace, checks = lab_checks(SOURCE)
    helper = locked_helpers(SOURCE, "drive_nested", lab=lab, walk_2d=_walk_2d(**mistake))["drive_nested"]
    return run_check(checks[check], namespace["params_for"](5), drive_nested=helper)


def test_q3_a_right_walk_passes_and_each_wrong_one_is_named() -> None:
    for check in ("walks_the_practice_guests", "walks_your_guests", "walks_other_guests_and_depths"):
        result = _run_q3(check)
        assert result.passed, (check, result.message)
    twice = _run_q3("walks_the_practice_guests", twice=True)
    assert not twice.passed and "more memory references than the hardware" in twice.message, twice.message
    untranslated = _run_q3("walks_your_guests", translate_data=False)
    assert not untranslated.passed and "walk_2d translated va" in untranslated.message, untranslated.message


def test_q5_names_the_forgotten_1d_walk_of_shadow_paging() -> None:
    namespace, checks = lab_checks(SOURCE)

    def without_walks(run: dict[str, Any], exit_cycles: int, ref_cycles: int) -> int:
        if run["mode"] == "shadow":
            return int(run["shadow_fills"] * exit_cycles + run["guest_pte_reads"] * ref_cycles)
        return int(run["nested_refs"] * ref_cycles)

    public = run_check(checks["cost_model_on_examples"], namespace["params_for"](5), paging_cycles=without_walks)
    assert not public.passed and "still walks the shadow table" in public.message, public.message
    assert not run_check(checks["cost_model_on_your_costs"], namespace["params_for"](5),
                         paging_cycles=without_walks).passed
