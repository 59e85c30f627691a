"""The one exception vlab raises for anything a user can fix.

Every :class:`VlabError` names *what* was wrong (the field or key), the
offending *value*, the *problem* and the *fix*, so that a student reading it in
a notebook knows what to change without reading a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VlabError", "StateError"]


class VlabError(Exception):
    """A clear, user-facing error.

    :param problem: what is wrong, in one sentence.
    :param field: the configuration key, argument or component concerned.
    :param value: the offending value, if there is one.
    :param fix: how to fix it (a command, a valid range, an example).
    :param detail: extra context, e.g. the tail of QEMU's stderr.
    """

    def __init__(
        self,
        problem: str,
        *,
        field: str | None = None,
        value: Any = None,
        fix: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.problem = problem
        self.field = field
        self.value = value
        self.fix = fix
        self.detail = detail
        super().__init__(self._render())

    def _render(self) -> str:
        head = f"{self.field}: " if self.field else ""
        if self.field and self.value is not None:
            head = f"{self.field} = {self.value!r}: "
        text = head + self.problem
        if self.fix:
            text += f"\n  fix: {self.fix}"
        if self.detail:
            text += "\n  " + self.detail.rstrip().replace("\n", "\n  ")
        return text


class StateError(VlabError):
    """An operation was asked of an object in a state that does not allow it."""

    def __init__(self, operation: str, state: str, allowed: list[str], fix: str | None = None) -> None:
        super().__init__(
            f"cannot {operation} while the object is {state!r} (allowed in: {', '.join(allowed)})",
            field=operation,
            fix=fix,
        )
        self.operation = operation
        self.state = state
        self.allowed = allowed
