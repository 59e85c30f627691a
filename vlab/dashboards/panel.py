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
* reading apart from drawing — :meth:`Panel._read` (optional) fetches from the
  watched object *outside* the panel's lock, so a read that blocks (a VM busy
  stopping) never holds up a button callback that only redraws;
* display — in a notebook the widget renders under a display id; everywhere else
  (nbval's text comparison, terminals, ``print(panel)``) the ``text/plain`` form
  is the summary. :meth:`close` replaces the displayed widget by a static
  figure (:meth:`Panel.figure`), so a view summarising a finished run stays
  visible after its cell and in the saved notebook.

States: a panel is *open* until :meth:`close`; refreshing or starting updates
on a closed panel raises :class:`vlab.errors.StateError`.
"""

from __future__ import annotations

import abc
import contextlib
import html
import threading
import time
import uuid
import weakref
from types import TracebackType
from typing import Any, Self

import ipywidgets as widgets
import plotly.graph_objects as go

from vlab.errors import StateError
from vlab.plots import mimebundle

__all__ = ["DEFAULT_INTERVAL", "Panel", "error_html", "error_of"]

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
        self._display_id: str | None = None  # set once the panel is displayed in a notebook

    # -- subclasses fill these in

    @abc.abstractmethod
    def _update(self) -> None:
        """Read the watched object and redraw the widgets (called under the panel's lock)."""

    @abc.abstractmethod
    def text(self) -> str:
        """A plain-text summary of what the panel shows."""

    def _read(self) -> None:
        """Fetch from the watched object before a redraw, outside the panel's lock (default: nothing).

        Subclasses whose object may block (a VM in the middle of ``stop()``) read here and keep what they read,
        so :meth:`_update` only draws. An exception is shown like one from :meth:`_update`.
        """
        return None

    def figure(self) -> go.Figure | None:
        """The panel's chart, drawn as a static figure in place of the widget when the panel closes."""
        return None

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
        read_error = error_of(self._read)
        with self._lock:
            self._redraw(read_error)
        return True

    def redraw(self) -> None:
        """Draw what was last read, without reading (never waits for the watched object)."""
        self._require_open("redraw")
        with self._lock:
            self._redraw(None)

    def _redraw(self, read_error: str | None) -> None:
        # a live panel must survive a failing read; the error is shown instead
        self.error = error_of(self._update) or read_error
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

    @property
    def sample_period(self) -> float:
        """Seconds between two turns of the live updates (default: the redraw interval)."""
        return self.interval

    def _tick(self) -> None:
        """One turn of the live updates: a redraw (subclasses may read more often than they redraw)."""
        self.refresh(force=True)

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
        if self._display_id is not None:
            # first the static form, then close the widgets: a view whose model is gone shows an error instead
            import IPython.display

            update: Any = IPython.display.update_display  # IPython is untyped
            update(self._final_bundle(), raw=True, display_id=self._display_id)
        _close_tree(self.widget)

    def _final_bundle(self) -> dict[str, Any]:
        with self._lock:
            figure = self.figure()
            bundle = mimebundle(figure) if figure is not None else {}
            bundle["text/plain"] = self.text()
        return bundle

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

    def _ipython_display_(self) -> None:
        """``display(panel)`` or a cell ending in ``panel``: the widget, under a display id kept for :meth:`close`."""
        import IPython.display

        if self._display_id is None:
            self._display_id = f"vlab-{type(self).__name__}-{uuid.uuid4().hex}"
        display: Any = IPython.display.display  # IPython is untyped
        display(self._repr_mimebundle_(), raw=True, display_id=self._display_id)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget view for a notebook frontend, with the text summary as ``text/plain``."""
        if self.closed:  # a closed widget has no view left to show: the static form instead
            return self._final_bundle()
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = self.text()
        return bundle


def _update_loop(panel_ref: weakref.ref[Panel], stop: threading.Event) -> None:
    """Refresh the panel until told to stop, the panel is closed, or it is garbage-collected."""
    while True:
        panel = panel_ref()
        if panel is None or panel.closed:
            return
        period = panel.sample_period
        with contextlib.suppress(StateError):  # closed meanwhile: the next turn ends the loop
            panel._tick()
        del panel  # hold the panel only while refreshing it
        if stop.wait(period):
            return


def error_of(action: Any) -> str | None:
    """Run *action*; None if it worked, else ``"Type: message"`` for the panel's error line."""
    try:
        action()
    except Exception as exc:  # shown in the panel: a dashboard must outlive a failing read
        return f"{type(exc).__name__}: {exc}"
    return None


def error_html(text: str) -> str:
    """*text* as red HTML, for errors shown in a panel."""
    return f"<span style='color:#b00'>{html.escape(text, quote=False)}</span>"


def _close_tree(widget: Any) -> None:
    """Close a widget and its descendants (``Widget.close_all`` would close every widget in the kernel)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()
