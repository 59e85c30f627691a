"""The base of every dashboard: a widget, throttled refreshes, optional live updates, a text form.

A :class:`Panel` owns an ipywidgets box (``panel.widget``) and knows how to
redraw it from the object it watches (``_update``, written by each subclass)
and how to describe itself in plain text (``text()``). Around that it adds:

* throttling — :meth:`Panel.refresh` redraws at most once per ``interval``;
  a refresh asked for too soon is deferred to a one-shot timer (trailing edge),
  so the last change always shows and nothing blocks the notebook;
* live updates — :meth:`Panel.start_updates` refreshes from a daemon thread
  until :meth:`Panel.stop_updates` or :meth:`Panel.close`; the thread holds the
  panel only weakly, so a forgotten panel does not keep a thread alive;
* display — in a notebook the widget renders; everywhere else (nbval's text
  comparison, terminals, ``print(panel)``) the ``text/plain`` form is the summary.

States: a panel is *open* until :meth:`close`; refreshing or starting updates
on a closed panel raises :class:`vlab.errors.StateError`.
"""

from __future__ import annotations

import abc
import contextlib
import html
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Self

import ipywidgets as widgets

from vlab.errors import StateError

__all__ = ["DEFAULT_INTERVAL", "Panel", "error_html"]

#: seconds between two redraws: fast enough to feel live, slow enough for a 2-core Binder
DEFAULT_INTERVAL = 0.5


class Panel(abc.ABC):
    """Base class of the dashboards (see the module docstring).

    :param interval: minimum seconds between two redraws, and the period of live updates.
    :param title: the panel's title, shown by subclasses in their heading or chart.
    """

    def __init__(self, *, interval: float = DEFAULT_INTERVAL, title: str = "") -> None:
        self.interval = interval
        self.title = title
        self.closed = False
        self.error: str | None = None
        self.refreshes = 0
        self._last_refresh = -float("inf")
        self._lock = threading.RLock()
        self._trailing: threading.Timer | None = None
        self._stop_updates = threading.Event()
        self._updater: threading.Thread | None = None
        self.status = widgets.HTML(value="")
        self.widget = widgets.VBox([])

    # -- subclasses fill these in

    @abc.abstractmethod
    def _update(self) -> None:
        """Read the watched object and redraw the widgets (called under the panel's lock)."""

    @abc.abstractmethod
    def text(self) -> str:
        """A plain-text summary of what the panel shows."""

    # -- refreshing

    def refresh(self, force: bool = False) -> bool:
        """Redraw from the watched object, unless the last redraw was less than ``interval`` ago.

        A throttled call schedules one redraw for when the interval has passed.

        :param force: redraw now regardless of the throttle.
        :return: whether the panel was redrawn now.
        :raises StateError: if the panel is closed.
        """
        self._require_open("refresh")
        with self._lock:
            wait = self._last_refresh + self.interval - time.monotonic()
            if wait > 0 and not force:
                self._schedule_trailing(wait)
                return False
            self._last_refresh = time.monotonic()
            self._redraw()
            return True

    def _redraw(self) -> None:
        try:
            self._update()
            self.error = None
        except Exception as exc:  # a live panel must survive a failing read; the error is shown instead
            self.error = f"{type(exc).__name__}: {exc}"
        self.refreshes += 1
        self._show_status()

    def _show_status(self) -> None:
        self.status.value = error_html(self.error) if self.error else ""

    def _schedule_trailing(self, wait: float) -> None:
        if self._trailing is not None and self._trailing.is_alive():
            return
        self._trailing = threading.Timer(wait, self._trailing_refresh)
        self._trailing.daemon = True
        self._trailing.start()

    def _trailing_refresh(self) -> None:
        with contextlib.suppress(StateError):  # closed meanwhile: nothing to draw
            self.refresh(force=True)

    # -- live updates

    def start_updates(self, interval: float | None = None) -> None:
        """Refresh every *interval* seconds (default: the panel's) from a background thread."""
        self._require_open("start_updates")
        if interval is not None:
            self.interval = interval
        if self.updating:
            return
        self._stop_updates.clear()
        self._updater = threading.Thread(target=_update_loop, args=(weakref.ref(self), self._stop_updates),
                                         name=f"vlab-{type(self).__name__}", daemon=True)
        self._updater.start()

    def stop_updates(self) -> None:
        """Stop the background refreshes (and wait for the thread to end)."""
        self._stop_updates.set()
        if self._updater is not None and self._updater is not threading.current_thread():
            self._updater.join(timeout=5)
        self._updater = None

    @property
    def updating(self) -> bool:
        """Whether live updates are running."""
        return self._updater is not None and self._updater.is_alive()

    # -- lifetime

    def close(self) -> None:
        """Stop updates, cancel a pending redraw and close the widgets (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.stop_updates()
        if self._trailing is not None:
            self._trailing.cancel()
        _close_tree(self.widget)

    def _require_open(self, operation: str) -> None:
        if self.closed:
            raise StateError(operation, "closed", ["open"], fix="create a new panel")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- display

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view for a notebook frontend, with the text summary as ``text/plain``."""
        if self.closed:  # a closed widget has no view left to show
            return {"text/plain": self.text()}
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = self.text()
        return bundle


def _update_loop(panel_ref: weakref.ref[Panel], stop: threading.Event) -> None:
    """Refresh the panel until told to stop, the panel is closed, or it is garbage-collected."""
    while True:
        panel = panel_ref()
        if panel is None or panel.closed:
            return
        interval = panel.interval
        with contextlib.suppress(StateError):  # closed meanwhile: the next turn ends the loop
            panel.refresh(force=True)
        del panel  # hold the panel only while refreshing it
        if stop.wait(interval):
            return


def error_html(text: str) -> str:
    """*text* as red HTML, for errors shown in a panel."""
    return f"<span style='color:#b00'>{html.escape(text, quote=False)}</span>"


def _close_tree(widget: Any) -> None:
    """Close a widget and its descendants (``Widget.close_all`` would close every widget in the kernel)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()
