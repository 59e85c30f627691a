"""Checks: registration, results with misconception messages, tolerances, the notebook table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from vlab.grading import checks
from vlab.grading.checks import (
    CheckFailed,
    Registry,
    StudentCodeError,
    check_for,
    expect,
    expect_close,
    expect_equal,
    needs_host,
    run_checks,
    run_public,
)
from vlab.grading.gradebook import feedback_html
from vlab.grading.results import QuestionScore, SubmissionResult
from vlab.grading.sandbox import _score


def test_expect_close_names_the_relative_tolerance() -> None:
    expect_close(2.52, 2.5, rel=0.05)
    with pytest.raises(CheckFailed, match=r"boot time: expected 2.5 ± 5 % \(got 2.71\)"):
        expect_close(2.71, 2.5, rel=0.05, what="boot time")


def test_expect_close_names_the_absolute_tolerance_and_rejects_non_numbers() -> None:
    with pytest.raises(CheckFailed, match=r"expected 24 ± 1 \(got 26\)"):
        expect_close(26, 24, abs=1)
    with pytest.raises(CheckFailed, match="should be a number"):
        expect_close("24", 24, abs=1)


def test_expect_equal_shows_both_values() -> None:
    with pytest.raises(CheckFailed, match=r"walk: \(expected 24, got 8\)"):
        expect_equal(8, 24, "walk:")


def test_expect_equal_shows_addresses_in_the_base_of_the_question() -> None:
    with pytest.raises(CheckFailed, match=r"walk: \(expected 0x80001000, got None\)"):
        expect_equal(None, 0x8000_1000, "walk:", base=16)
    with pytest.raises(CheckFailed, match=r"expected 0x10, got 'x'"):  # a wrong type is shown as it is
        expect_equal("x", 16, base=16)
    with pytest.raises(CheckFailed, match=r"expected True, got False"):  # a bool is no address
        expect_equal(False, True, base=16)
    with pytest.raises(ValueError, match="base must be 10 or 16"):
        expect_equal(1, 1, base=8)


def test_registry_collects_with_points_and_hidden_flag() -> None:
    with Registry(hidden=True) as registry:

        @check_for("q1", points=2)
        def first(sub: object, params: object) -> None:
            pass

        @check_for("q1", name="renamed")
        def second(sub: object, params: object) -> None:
            pass

    assert [(c.name, c.points, c.hidden) for c in registry.checks] == [("first", 2.0, True), ("renamed", 1.0, True)]


def test_results_carry_misconception_and_student_errors_without_crashing() -> None:
    with Registry() as registry:

        @check_for("q1")
        def adds(sub: object, params: object) -> None:
            expect(False, "you added the two walks")

        @check_for("q1")
        def student_raises(sub: object, params: object) -> None:
            raise StudentCodeError("walk(4, 4) raised ZeroDivisionError: division by zero")

        @check_for("q1")
        def stub(sub: object, params: object) -> None:
            raise NotImplementedError

        @check_for("q1", points=3)
        def passes(sub: object, params: object) -> None:
            pass

    results = run_checks(registry.checks, object(), {})
    assert [(r.name, r.passed, r.score) for r in results] == [
        ("adds", False, 0),
        ("student_raises", False, 0),
        ("stub", False, 0),
        ("passes", True, 3),
    ]
    assert results[0].message == "you added the two walks"
    assert "ZeroDivisionError" in results[1].message
    assert "not answered yet" in results[2].message


def test_a_check_the_host_cannot_run_is_unchecked_with_zero_points_and_says_why() -> None:
    with Registry() as registry:

        @check_for("q2", points=2)
        def needs_namespaces(sub: object, params: object) -> None:
            needs_host(True, "never shown")  # a host that can: the check goes on
            needs_host(False, "unshare(1) is not installed")
            raise AssertionError("not reached")

    (result,) = run_checks(registry.checks, object(), {})
    assert (result.passed, result.unchecked, result.unanswered, result.score) == (False, True, False, 0)
    assert result.message == "not checked on this host: unshare(1) is not installed"
    assert result.as_dict()["unchecked"] is True and checks.CheckResult(**result.as_dict()) == result
    hidden = checks.CheckResult("q2", "hidden_one", 1, True, False, result.message, unchecked=True)
    assert hidden.as_dict(reveal=False)["message"] == result.message  # it names the host, not the answer
    report = checks.CheckReport("q2", [result])
    assert "n/a   needs_namespaces  0/2" in report.text() and ">n/a<" in report.html()
    # the submission's status names it, after the others
    graded = SubmissionResult("s1", "05", "s1.ipynb", {"q2": QuestionScore(0, 2)}, 2)
    _score(graded, [result])
    assert graded.status == "unchecked" and graded.total == 0
    assert "<tr class='unchecked'><td>unchecked</td>" in feedback_html(graded)
    graded.flag("errors")
    assert graded.status == "errors+unchecked"


def test_hidden_message_is_dropped_when_not_revealed() -> None:
    result = checks.CheckResult("q1", "secret_case", 1, True, False, "expected 2880067194370816120")
    assert result.as_dict(reveal=False)["message"] == ""
    assert result.as_dict()["message"] == "expected 2880067194370816120"


def test_notebook_check_runs_public_checks_against_the_notebook_names(capsys: pytest.CaptureFixture[str]) -> None:
    @check_for("qtest")
    def doubles(sub: object, params: Mapping[str, int]) -> None:
        expect_equal(sub.double(params["n"]), 2 * params["n"], "double(n)")  # type: ignore[attr-defined]

    try:
        report = run_public("qtest", {"double": lambda n: n + n, "PARAMS": {"n": 21}})
        assert (report.score, report.max_score) == (1, 1)
        report = run_public("qtest", {"PARAMS": {"n": 21}})
        assert "'double' is not defined" in report.results[0].message
        assert "FAIL" in report.text() and "<table>" in report.html()
        checks.check("qtest")  # outside a kernel: plain text
        assert "qtest: 0/1 points" in capsys.readouterr().out
    finally:
        checks._NOTEBOOK._checks.clear()


def test_notebook_check_shows_an_ipywidget_table_in_a_real_kernel() -> None:
    import nbformat
    from nbclient import NotebookClient

    v4: Any = nbformat.v4  # nbformat's constructors are untyped
    notebook = v4.new_notebook()
    notebook.cells = [
        v4.new_code_cell(
            "import vlab.grading\n\n"
            "@vlab.grading.check_for('q1')\n"
            "def answer_is_42(sub, params):\n"
            "    vlab.grading.expect_equal(sub.answer, 42, 'the answer')\n\n"
            "answer = 41\n"
            "vlab.check('q1')"
        )
    ]
    NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    (output,) = notebook.cells[0].outputs
    assert "application/vnd.jupyter.widget-view+json" in output["data"]
    assert "<b>q1</b>: 0/1 points<table>" in output["data"]["text/plain"]  # the repr is truncated after this
