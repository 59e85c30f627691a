"""Progress reporting for long work: image builds, VM boots, migrations, grading batches.

One decision drives everything here, :func:`display_mode`:

``"notebook"``
    inside a Jupyter kernel: tqdm's ipywidgets bar (what ``tqdm.auto`` picks).
``"terminal"``
    stderr is a TTY: tqdm's text bar, redrawn in place.
``"plain"``
    neither (CI logs, pipes) or ``VLAB_PLAIN=1``: bars stay quiet, and
    :func:`steps` prints a single line per step, so logs stay short and readable.

Two forms:

* :func:`progress` wraps an iterable (or a count) and is also a context manager
  with :meth:`Progress.update` for work that is not a loop.
* :func:`steps` is a context manager for a few named stages::

      with steps(3, "Building image") as step:
          step("download kernel")
          ...
          step("pack initramfs")

The bar itself is tqdm's: vlab only chooses the flavour and the quiet cases.
:mod:`vlab.plots` and :mod:`vlab.dashboards` use :func:`display_mode` too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, overload

from vlab.errors import VlabError

__all__ = ["DisplayMode", "Progress", "Steps", "display_mode", "progress", "steps"]

DisplayMode = Literal["notebook", "terminal", "plain"]
MODES: tuple[DisplayMode, ...] = ("notebook", "terminal", "plain")
T = TypeVar("T")


def display_mode() -> DisplayMode:
    """Where output goes: ``"notebook"``, ``"terminal"`` or ``"plain"`` (see the module docstring).

    ``VLAB_PLAIN=1`` forces ``"plain"``; a Jupyter kernel means ``"notebook"``
    (detected as ``tqdm.auto`` does); otherwise a TTY on stderr means ``"terminal"``.
    """
    if os.environ.get("VLAB_PLAIN", "") not in ("", "0"):
        return "plain"
    if in_jupyter_kernel():
        return "notebook"
    return "terminal" if _isatty(sys.stderr) else "plain"


def in_jupyter_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (JupyterLab, nbclient, nbval), not a console."""
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _resolve(mode: DisplayMode | None) -> DisplayMode:
    if mode is None:
        return display_mode()
    if mode not in MODES:
        raise VlabError(f"unknown display mode (known: {', '.join(MODES)})", field="mode", value=mode,
                        fix="leave mode=None to detect it")
    return mode


def _tqdm(mode: DisplayMode, total: int | None, desc: str, unit: str) -> Any:
    """A tqdm bar of the flavour *mode* asks for, or None when quiet."""
    if mode == "plain":
        return None
    if mode == "notebook":
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, desc=desc, unit=unit, disable=False, leave=True)
    from tqdm.std import tqdm as terminal_tqdm

    return terminal_tqdm(total=total, desc=desc, unit=unit, disable=False, leave=True, file=sys.stderr,
                         dynamic_ncols=True)


class Progress(Generic[T]):
    """A progress bar over an iterable, or a manually advanced one.

    Build it with :func:`progress`. Iterating yields the items and advances the
    bar; :meth:`update` advances it by hand. It closes itself at the end of the
    iteration, on ``close()`` or when its ``with`` block ends.
    """

    def __init__(self, items: Iterable[T], total: int | None, desc: str, unit: str,
                 mode: DisplayMode) -> None:
        self._items = items
        self.total = total
        self.desc = desc
        self.mode: DisplayMode = mode
        self.n = 0
        self.started = time.monotonic()
        self.closed = False
        self._bar = _tqdm(mode, total, desc, unit)

    def __iter__(self) -> Iterator[T]:
        try:
            for item in self._items:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """Advance by *n* units."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        """Change the label in front of the bar (e.g. to the current item)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=True)

    @property
    def widget(self) -> Any:
        """The ipywidgets box showing the bar in notebook mode (to embed in a panel), else None."""
        return getattr(self._bar, "container", None)

    @property
    def elapsed(self) -> float:
        """Seconds since the bar was created."""
        return time.monotonic() - self.started

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@overload
def progress(items: int, desc: str = "", *, unit: str = "it",
             mode: DisplayMode | None = None) -> Progress[int]:
    ...


@overload
def progress(items: Iterable[T], desc: str = "", *, total: int | None = None, unit: str = "it",
             mode: DisplayMode | None = None) -> Progress[T]:
    ...


def progress(items: Iterable[Any] | int, desc: str = "", *, total: int | None = None, unit: str = "it",
             mode: DisplayMode | None = None) -> Progress[Any]:
    """Show progress over *items* (an iterable, or a count meaning ``range(count)``).

    ::

        for vm in progress(vms, desc="Booting"):
            vm.start()

        with progress(total_bytes, desc="Download", unit="B") as bar:
            for chunk in chunks:
                bar.update(len(chunk))   # (do not also iterate a count you update by hand)

    :param items: what to iterate, or how many units of work there are.
    :param desc: a short label shown before the bar.
    :param total: the length of *items* when ``len()`` cannot tell (a generator).
    :param unit: the unit shown in the rate (``"it"``, ``"B"``, ``"VM"``).
    :param mode: force a display mode; ``None`` detects it with :func:`display_mode`.
    """
    if isinstance(items, int):
        if items < 0:
            raise VlabError("a count of work cannot be negative", field="items", value=items,
                            fix="pass n >= 0")
        return Progress(range(items), items, desc, unit, _resolve(mode))
    if total is None:
        total = _length(items)
    return Progress(items, total, desc, unit, _resolve(mode))


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class Steps:
    """A few named stages of one task, reported as they start. Build it with :func:`steps`.

    Calling the object starts the next step (finishing the previous one). In
    plain mode each step prints one line to stderr, and the end prints the
    total time, or which step failed.
    """

    def __init__(self, total: int | None, desc: str, mode: DisplayMode) -> None:
        self.total = total
        self.desc = desc
        self.mode: DisplayMode = mode
        self.done = 0
        self.current: str | None = None
        self.started = time.monotonic()
        self._bar = _tqdm(mode, total, desc, "step")

    def __call__(self, name: str) -> None:
        """Start the step called *name*."""
        if self.current is not None:
            self._advance()
        self.current = name
        if self._bar is not None:
            self._bar.set_description(f"{self.desc}: {name}", refresh=True)
        else:
            self._line(f"[{self.done + 1}/{self.total}] {name}" if self.total else name)

    def _advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}" if self.desc else text, file=sys.stderr, flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        elapsed = time.monotonic() - self.started
        if exc_type is None and self.current is not None:
            self._advance()
        if self._bar is not None:
            if exc_type is not None:
                self._bar.set_description(f"{self.desc}: failed at {self.current!r}", refresh=True)
            self._bar.close()
        elif exc_type is None:
            self._line(f"done in {elapsed:.1f} s")
        else:
            self._line(f"failed at step {self.current!r} after {elapsed:.1f} s")


def steps(total: int | None = None, desc: str = "", *, mode: DisplayMode | None = None) -> Steps:
    """A context manager reporting the named steps of one task (see :class:`Steps`).

    :param total: how many steps there will be, if known.
    :param desc: the task, e.g. ``"Building image"``.
    :param mode: force a display mode; ``None`` detects it with :func:`display_mode`.
    """
    return Steps(total, desc, _resolve(mode))
