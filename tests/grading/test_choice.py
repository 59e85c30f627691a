"""Multiple choice: options of similar length, letters shuffled per instance, no answer in the object."""

from __future__ import annotations

import pickle

import pytest

from vlab.errors import VlabError
from vlab.grading.checks import CheckFailed
from vlab.grading.choice import Choice

OPTIONS = [
    "the guest needs more vCPUs to finish",
    "the lock holder was descheduled",
    "amoswap traps to the VMM each time",
    "the neighbour evicts the lock's line",
]


def test_letters_are_shuffled_per_instance_and_map_back() -> None:
    choice = Choice("q3", OPTIONS)
    orders = {tuple(choice.order({"seed": n})) for n in range(40)}
    assert len(orders) > 10  # 24 orders possible: the letter of the right option varies between students
    params = {"seed": 7}
    for index in range(len(OPTIONS)):
        letter = choice.letter(index, params)
        assert choice.chosen(letter, params) == index
        assert choice.chosen(f" {letter.upper()}) ", params) == index
    assert choice.order(params) == Choice("q3", list(OPTIONS)).order(dict(params))  # notebook == grader


def test_a_letter_that_names_no_option_is_none() -> None:
    choice = Choice("q3", OPTIONS)
    for answer in ("e", "", "ab", None, 1, ["a"], "🙂"):
        assert choice.chosen(answer, {}) is None
    with pytest.raises(CheckFailed, match="one letter: a, b, c, d"):
        choice.expect_letter("e")
    assert choice.expect_letter("B)") == "b"


def test_the_options_of_different_length_are_refused() -> None:
    with pytest.raises(VlabError, match="differ too much in length"):
        Choice("q3", ["short", "short two", "a much longer and very careful statement that is right"])


@pytest.mark.parametrize(
    ("question", "options", "problem"),
    [
        ("q3", ["a", "b"], "3 to 8 options"),
        ("q3", "abc", "3 to 8 options"),
        ("q3", ["x"] * 9, "3 to 8 options"),
        ("q3", ["same", "same", "diff"], "the same"),
        ("q3", ["one", "", "two"], "non-empty"),
        ("q3", ["one", 2, "two"], "non-empty"),
        ("3; import os", ["one", "two", "six"], "question id"),
    ],
)
def test_bad_choices_are_refused(question: str, options: list[str], problem: str) -> None:
    with pytest.raises(VlabError, match=problem):
        Choice(question, options)


def test_the_object_holds_no_answer() -> None:
    choice = Choice("q3", OPTIONS)
    assert set(vars(choice)) == {"question", "options", "prompt"}
    assert b"answer" not in pickle.dumps(choice) and "answer" not in repr(choice)


def test_text_lists_the_options_in_the_instances_order(capsys: pytest.CaptureFixture[str]) -> None:
    choice = Choice("q3", OPTIONS)
    choice.show({"seed": 1})
    shown = capsys.readouterr().out
    for letter, index in zip("abcd", choice.order({"seed": 1}), strict=True):
        assert f"{letter}) {OPTIONS[index]}" in shown


def test_a_choice_of_several_true_statements_says_so_above_its_options() -> None:
    options = ["one statement here", "another statement", "a third statement"]
    several = Choice("q5", options, prompt="give the set of letters of the true statements")
    assert several.text({"seed": 1}).splitlines()[0] == "q5: give the set of letters of the true statements"
    assert Choice("q4", options).text({"seed": 1}).splitlines()[0] == "q4: pick one letter"
