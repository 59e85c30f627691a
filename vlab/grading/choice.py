"""Multiple-choice questions that do not give themselves away.

A :class:`Choice` holds the options of one question, *never* which one is right: that lives only in
the lab's hidden check. Options must be of similar length (the single long, careful option is the
classic tell), and their letters are shuffled per student instance, so a letter copied from a
neighbour is worth nothing. The order is derived from the instance's parameters, which the
notebook and the grader compute alike (see :mod:`vlab.grading.seeds`).

Define it in the lab's ``params`` cell (the grader runs that cell before the checks)::

    LHP = vlab.grading.Choice("q3", ["the guest needs more vCPUs …", "the holder was descheduled …", …])

show it with ``LHP.show(PARAMS)``; the student writes ``lhp_answer = "c"``; the hidden check does
``picked = LHP.chosen(sub.lhp_answer, params)`` and compares it with the option's index in the list.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from vlab.errors import VlabError
from vlab.grading.checks import fail

__all__ = ["MAX_LENGTH_RATIO", "Choice"]

#: Longest option ÷ shortest option, at most (by characters).
MAX_LENGTH_RATIO = 1.5

_QUESTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


class Choice:
    """The options of one multiple-choice question, shuffled per instance.

    :param question: the question id (``"q3"``).
    :param options: 3 to 8 distinct statements, each a plausible misconception but one.
    :param max_ratio: the longest option may be at most this many times the shortest.
    :param prompt: how to answer, shown above the options (e.g. for a set of letters).
    :raises VlabError: for too few/many options, duplicates, or options of very different length.
    """

    def __init__(self, question: str, options: Sequence[str], *, max_ratio: float = MAX_LENGTH_RATIO,
                 prompt: str = "pick one letter") -> None:
        if not isinstance(question, str) or not _QUESTION_RE.fullmatch(question):
            raise VlabError("not a question id", field="question", value=question, fix='use e.g. "q3"')
        if isinstance(options, str) or not isinstance(options, Sequence) or not 3 <= len(options) <= 8:
            raise VlabError(
                "a choice needs 3 to 8 options",
                field=f"{question} options",
                value=options,
                fix="give a list of statements, each a real misconception but the right one",
            )
        texts = [" ".join(str(o).split()) for o in options]
        if any(not isinstance(o, str) or not t for o, t in zip(options, texts, strict=True)):
            raise VlabError("every option must be a non-empty string", field=f"{question} options", value=options)
        if len(set(texts)) != len(texts):
            raise VlabError("two options are the same", field=f"{question} options", value=texts)
        longest, shortest = max(texts, key=len), min(texts, key=len)
        if len(longest) > max_ratio * len(shortest):
            raise VlabError(
                f"the options differ too much in length ({len(longest)} vs {len(shortest)} characters, "
                f"more than {max_ratio:g}×): the long careful one gives itself away",
                field=f"{question} options",
                value=shortest,
                fix="give every option the same amount of detail (shorten the longest, or detail the shortest)",
            )
        self.question, self.prompt = question, str(prompt)
        self.options: tuple[str, ...] = tuple(texts)

    def order(self, params: Mapping[str, Any]) -> list[int]:
        """The indices of :attr:`options` in the order shown to the instance with ``params``."""
        canonical = json.dumps(dict(params), sort_keys=True, default=repr)
        digest = hashlib.sha256(f"vlab-choice\0{self.question}\0{canonical}".encode()).digest()
        order = list(range(len(self.options)))
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
        return order

    @property
    def letters(self) -> str:
        return string.ascii_lowercase[: len(self.options)]

    def letter(self, index: int, params: Mapping[str, Any]) -> str:
        """The letter under which option ``index`` (of :attr:`options`) is shown to this instance."""
        return self.letters[self.order(params).index(index)]

    def chosen(self, answer: object, params: Mapping[str, Any]) -> int | None:
        """The index (in :attr:`options`) of the option the letter ``answer`` names, or None if it names none."""
        if not isinstance(answer, str):
            return None
        letter = answer.strip().lower().rstrip(")")
        if len(letter) != 1 or letter not in self.letters:
            return None
        return self.order(params)[self.letters.index(letter)]

    def expect_letter(self, answer: object) -> str:
        """In a check: fail unless ``answer`` is one of the letters; returns it normalised."""
        if self.chosen(answer, {}) is None:
            fail(f"answer {self.question} with one letter: {', '.join(self.letters)} (got {answer!r})")
        return str(answer).strip().lower().rstrip(")")

    def text(self, params: Mapping[str, Any]) -> str:
        lines = [f"{self.question}: {self.prompt}"]
        for letter, index in zip(self.letters, self.order(params), strict=True):
            lines.append(f"  {letter}) {self.options[index]}")
        return "\n".join(lines)

    def show(self, params: Mapping[str, Any]) -> None:
        """Print (or, in JupyterLab, display) the options in this instance's order."""
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display
        except ImportError:
            print(self.text(params))
            return
        if get_ipython() is None:
            print(self.text(params))
            return
        items = "".join(
            f"<li><b>{letter}</b>) {html.escape(self.options[index])}</li>"
            for letter, index in zip(self.letters, self.order(params), strict=True)
        )
        head = f"<b>{html.escape(self.question)}</b>: {html.escape(self.prompt)}"
        display(HTML(f"<div>{head}<ul>{items}</ul></div>"))  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"Choice({self.question!r}, {len(self.options)} options)"
