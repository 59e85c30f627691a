"""The answer scan finds each leak class the issue lists, and not a short answer used innocently."""

from __future__ import annotations

from typing import Any

from vlab.grading.scan import AnswerLiteral, answer_literals, scan


def _nb(*cells: tuple[str, str]) -> dict[str, Any]:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": kind, "metadata": {}, "source": text} for kind, text in cells],
    }


BEGIN, END = "\n    ### BEGIN SOLUTION\n", "\n    ### END SOLUTION"
SOURCE = _nb(
    ("code", "# vlab: solution q4\ndef answer():" + BEGIN + '    return "B"' + END),
    ("code", "# vlab: solution q5\ndef order_matters():" + BEGIN + "    return False" + END),
    ("code", '# vlab: solution q6\nbroken = {"c", "d"}'),
    ("code", '# vlab: solution q7\nproperty_ = "equivalence"'),
    ("code", "# vlab: solution q8\ndef f(x):" + BEGIN + "    y = x * 2\n    return y + x" + END),
    ("code", "# an ordinary cell\nanswer = 42"),
)


def test_constant_answers_are_found_and_computed_ones_are_not() -> None:
    found = {(a.question, a.value) for a in answer_literals(SOURCE)}
    assert found == {("q4", "B"), ("q5", False), ("q6", frozenset({"c", "d"})), ("q7", "equivalence")}


def test_each_leak_class_of_the_issue_is_found() -> None:
    literals = answer_literals(SOURCE)
    student = _nb(
        ("code", 'if answer() != "b":\n    print("wrong")'),  # lab 01 q4: compared, case-insensitive
        ("code", "expect(order_matters() is False, 'no')"),  # lab 04 q4
        ("code", 'expect(set(sub.broken) == {"d", "c"}, "no")'),  # lab 01 q5, any order
        ("markdown", "Popek and Goldberg call this **Equivalence**."),  # in the prose
        ("code", "import hashlib\nhashlib.sha256(b'x')"),  # lab 05 q5
    )
    leaks = scan(student, literals)
    assert {(leak.question, leak.where) for leak in leaks} == {
        ("q4", "cell 0"),
        ("q5", "cell 1"),
        ("q6", "cell 2"),
        ("q7", "cell 3"),
        ("*", "cell 4"),
    }
    assert "compared with" in str(leaks[0])


def test_short_answers_used_innocently_are_not_leaks() -> None:
    literals = [AnswerLiteral("q4", "b"), AnswerLiteral("q5", False), AnswerLiteral("q9", 3)]
    student = _nb(
        ("code", 'guests = [GuestSpec("b", "compute", 512)]\nshow(legend=False)\nn = 3'),
        ("markdown", "Option b is about caches; b) and False appear in prose."),
        ("code", "%%time\nthis is not python ("),
    )
    assert scan(student, literals) == []


def test_a_small_set_holding_the_answer_in_a_comparison_is_a_leak() -> None:
    leaks = scan(_nb(("code", 'expect(x in ("b", "c"), "no")')), [AnswerLiteral("q4", "b")])
    assert [leak.how for leak in leaks] == ["compared with, in a small set"]


def test_the_lab_modules_a_notebook_imports_are_scanned() -> None:
    student = _nb(("code", "from vlab.labs import scheduling as lab"))
    assert scan(student, [AnswerLiteral("q1", "vlab.labs.scheduling")]) == []  # the import itself is no leak
    leaks = scan(student, [AnswerLiteral("q3", "fair-share-by-virtual-runtime-xyz")])
    assert leaks == []
    leaks = scan(student, [AnswerLiteral("q5", "round-robin")])  # a name the module does contain
    assert leaks and leaks[0].where == "vlab.labs.scheduling (the student's copy of vlab)"
