"""Checks: small functions with points, a name and a message per misconception.

A lab registers checks with :func:`check_for`; a check is called as ``check(sub, params)`` where
``sub`` exposes the student's names as attributes and ``params`` are the per-student parameters.
It passes by returning and fails by raising :class:`CheckFailed` (via :func:`fail`,
:func:`expect`, :func:`expect_equal`, :func:`expect_close`), whose message names the mistake.

Registration goes to the *active* :class:`Registry`: in a notebook that is the kernel-wide
default registry, read by :func:`check`; the grader collects the bundle's check cells into a
fresh registry of its own (``with Registry(hidden=True) as reg: exec(...)``), so nothing a
student does in their kernel reaches the grading registry.
"""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = [
    "Check",
    "CheckFailed",
    "CheckReport",
    "CheckResult",
    "Exports",
    "HostCannotCheck",
    "Registry",
    "StudentCodeError",
    "check",
    "check_for",
    "expect",
    "expect_close",
    "expect_equal",
    "fail",
    "needs_host",
    "run_checks",
    "run_public",
]

CheckFunction = Callable[[Any, Mapping[str, Any]], object]


class CheckFailed(AssertionError):
    """A check found a mistake; the message names it."""


class StudentCodeError(Exception):
    """The student's code raised (or timed out) while a check called it."""


class HostCannotCheck(Exception):
    """The host lacks what the check needs (e.g. namespaces): it was not checked, neither passed nor failed."""


def needs_host(condition: object, why: str) -> None:
    """Stop the running check as *not checked on this host* unless ``condition`` is true.

    The check scores 0 and the submission's status says ``unchecked``, so an instructor knows to grade it again on
    a host that can; it is never judged by a weaker stand-in (reading a command line instead of running it).
    """
    if not condition:
        raise HostCannotCheck(why)


def fail(message: str) -> NoReturn:
    """Fail the running check with ``message``."""
    raise CheckFailed(message)


def expect(condition: object, message: str) -> None:
    """Fail with ``message`` unless ``condition`` is true."""
    if not condition:
        raise CheckFailed(message)


def _shown(value: object, base: int) -> str:
    if base == 16 and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:#x}"
    return repr(value)


def expect_equal(actual: object, expected: object, message: str = "", *, base: int = 10) -> None:
    """Fail unless ``actual == expected``; the message shows both values (whole numbers in ``base``: 10 or 16,
    the base the question uses, e.g. 16 for addresses)."""
    if base not in (10, 16):
        raise ValueError(f"expect_equal: base must be 10 or 16, not {base!r}")
    if actual != expected:
        detail = f"expected {_shown(expected, base)}, got {_shown(actual, base)}"
        raise CheckFailed(f"{message} ({detail})" if message else detail)


def expect_close(
    actual: object,
    expected: float,
    *,
    rel: float | None = None,
    abs: float | None = None,  # mirrors math.isclose
    what: str = "the value",
    message: str = "",
) -> None:
    """Fail unless ``actual`` is within the tolerance of ``expected``; the message says which tolerance.

    :param rel: relative tolerance (0.05 = 5 %).
    :param abs: absolute tolerance, in the unit of the value.
    """
    if rel is None and abs is None:
        raise ValueError("expect_close needs rel= or abs=")
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        fail(f"{what} should be a number, got {actual!r}")
    tolerance = " and ".join(
        part
        for part in (f"± {rel * 100:g} %" if rel is not None else "", f"± {abs:g}" if abs is not None else "")
        if part
    )
    within = math.isclose(float(actual), float(expected), rel_tol=rel or 0.0, abs_tol=abs or 0.0)
    if not within:
        detail = f"{what}: expected {expected:g} {tolerance} (got {float(actual):g})"
        fail(f"{message} ({detail})" if message else detail)


@dataclass(frozen=True)
class Check:
    """One registered check."""

    question: str
    name: str
    points: float
    function: CheckFunction
    hidden: bool = False


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    question: str
    name: str
    points: float
    hidden: bool
    passed: bool
    message: str = ""
    #: The check failed because the student's stub still raises NotImplementedError.
    unanswered: bool = False
    #: The check could not run on this host (:func:`needs_host`): 0 points, and the submission is ``unchecked``.
    unchecked: bool = False

    @property
    def score(self) -> float:
        return self.points if self.passed else 0.0

    @property
    def outcome(self) -> str:
        """``pass``, ``fail`` or ``unchecked`` (the host could not run it): how tables and feedback show it."""
        return "pass" if self.passed else "unchecked" if self.unchecked else "fail"

    def as_dict(self, *, reveal: bool = True) -> dict[str, Any]:  # the JSON form: result.json, feedback
        """JSON form (without ``unanswered``: it has done its work by then); ``reveal=False`` drops the message of a
        hidden check (not of an unchecked one: it names the host, not the answer)."""
        return {
            "question": self.question,
            "name": self.name,
            "points": self.points,
            "hidden": self.hidden,
            "passed": self.passed,
            "message": self.message if reveal or not self.hidden or self.unchecked else "",
            "unchecked": self.unchecked,
        }


class Registry:
    """An ordered set of checks; the last registration of a (question, name) wins.

    Used as a context manager it becomes the registry :func:`check_for` adds to.

    :param hidden: mark every check registered while active as hidden.
    """

    def __init__(self, *, hidden: bool = False) -> None:
        self.hidden = hidden
        self._checks: dict[tuple[str, str], Check] = {}

    def add(self, new: Check) -> None:
        self._checks[(new.question, new.name)] = new

    @property
    def checks(self) -> list[Check]:
        return list(self._checks.values())

    def for_question(self, question: str) -> list[Check]:
        return [c for c in self._checks.values() if c.question == question]

    def __enter__(self) -> Registry:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.remove(self)


_NOTEBOOK = Registry()
_ACTIVE: list[Registry] = []


def _active() -> Registry:
    return _ACTIVE[-1] if _ACTIVE else _NOTEBOOK


def check_for(question: str, *, points: float = 1, name: str | None = None) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as a check of ``question`` worth ``points``."""

    def register(function: CheckFunction) -> CheckFunction:
        registry = _active()
        registry.add(Check(question, name or function.__name__, float(points), function, registry.hidden))
        return function

    return register


class Exports:
    """Attribute access to a student's names (the kernel's globals, or values from the grader).

    A missing name fails the check with a message, instead of crashing it.
    """

    def __init__(self, names: Mapping[str, Any]) -> None:
        self._names = names

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._names[name]
        except KeyError:
            fail(f"'{name}' is not defined: run the cell that defines it, and keep its name")

    def __contains__(self, name: str) -> bool:
        return name in self._names


def run_checks(checks: list[Check], sub: object, params: Mapping[str, Any]) -> list[CheckResult]:
    """Run checks one by one; a failing or crashing check never stops the others."""
    return [_run_one(c, sub, params) for c in checks]


def _run_one(one: Check, sub: object, params: Mapping[str, Any]) -> CheckResult:
    def result(passed: bool, message: str = "", unanswered: bool = False, unchecked: bool = False) -> CheckResult:
        return CheckResult(one.question, one.name, one.points, one.hidden, passed, message, unanswered, unchecked)

    try:
        one.function(sub, params)
    except HostCannotCheck as exc:
        return result(False, f"not checked on this host: {exc}", unchecked=True)
    except CheckFailed as exc:
        return result(False, str(exc))
    except StudentCodeError as exc:
        return result(False, str(exc))
    except NotImplementedError:
        return result(False, f"{one.question} is not answered yet (the stub raises NotImplementedError)", True)
    except Exception as exc:  # a check calling student code in the notebook: report, don't crash
        return result(False, f"{type(exc).__name__}: {exc}")
    return result(True)


#: how the notebook's table shows each outcome (a failure stands out), and in which colour
_SHOWN = {"pass": "pass", "fail": "FAIL", "unchecked": "n/a"}
_COLOURS = {"pass": "green", "n/a": "gray"}


@dataclass
class CheckReport:
    """Results of the checks of one question, as a table."""

    question: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.points for r in self.results)

    def rows(self) -> Iterator[tuple[str, str, str, str]]:
        for r in self.results:
            yield (_SHOWN[r.outcome], r.name, f"{r.score:g}/{r.points:g}", r.message)

    def text(self) -> str:
        if not self.results:
            return f"{self.question}: no public checks"
        lines = [f"{self.question}: {self.score:g}/{self.max_score:g} points"]
        for status, name, points, message in self.rows():
            lines.append(f"  {status:4}  {name}  {points}" + (f"\n        hint: {message}" if message else ""))
        return "\n".join(lines)

    def html(self) -> str:
        rows = "".join(
            f"<tr><td style='color:{_COLOURS.get(s, 'crimson')}'><b>{s}</b></td>"
            f"<td><code>{html.escape(n)}</code></td><td>{p}</td><td>{html.escape(m)}</td></tr>"
            for s, n, p, m in self.rows()
        )
        head = f"<b>{html.escape(self.question)}</b>: {self.score:g}/{self.max_score:g} points"
        return f"<div>{head}<table><tr><th></th><th>check</th><th>points</th><th>hint</th></tr>{rows}</table></div>"

    def _repr_html_(self) -> str:
        return self.html()

    def __str__(self) -> str:
        return self.text()


def _notebook_namespace() -> dict[str, Any]:  # the notebook's globals: any value
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None:
        return dict(shell.user_ns)
    return dict(vars(sys.modules["__main__"]))


def run_public(question: str, names: Mapping[str, Any] | None = None) -> CheckReport:
    """Run the notebook's public checks of ``question`` against ``names`` (default: the notebook's globals).

    ``params`` is the notebook's ``PARAMS`` (see the ``params`` cell of the lab).
    """
    names = _notebook_namespace() if names is None else names
    params = names.get("PARAMS", {})
    results = run_checks(_NOTEBOOK.for_question(question), Exports(names), params)
    return CheckReport(question, results)


def check(question: str) -> None:
    """Run the public checks of ``question`` in the notebook and show a pass/fail table with hints.

    Shown as an ipywidget in a kernel with ipywidgets, as text otherwise. Does nothing while the
    grader collects checks (the grader runs its own copy of them).
    """
    if _ACTIVE:
        return
    report = run_public(question)
    if not _show_widget(report):
        print(report.text())


def _show_widget(report: CheckReport) -> bool:
    try:
        import ipywidgets
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return False
    if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
        return False
    display(ipywidgets.HTML(report.html()))  # type: ignore[no-untyped-call]
    return True
