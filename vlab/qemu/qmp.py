"""QMP for one VM: a ``qemu.qmp`` client on vlab's loop, callable sync or async, with an event log.

:class:`QMPChannel` owns a :class:`qemu.qmp.QMPClient` connected over a socket
that QEMU inherited (no path, no connect retry: the peer exists before QEMU
even starts). Synchronous :meth:`QMPChannel.execute` and asynchronous
:meth:`QMPChannel.aexecute` both run the client on the loop of
:mod:`vlab.qemu.loop`, so both work inside Jupyter.

Every failure becomes a :class:`~vlab.errors.VlabError`: a QMP error response
names the command, its arguments and QEMU's description; a connection lost
because QEMU died carries QEMU's exit status and stderr tail; a command that
gets no answer times out instead of hanging.

Events are recorded as they arrive into an :class:`EventLog` (in arrival order:
older events first), which callers read or wait on from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient

from vlab.errors import VlabError
from vlab.qemu.loop import run_async, run_sync

__all__ = ["QMPChannel", "Event", "EventLog", "DEFAULT_QMP_TIMEOUT"]

#: Seconds a QMP command may take before vlab stops waiting (migration and snapshots poll instead).
DEFAULT_QMP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Event:
    """A QMP event: its name (``SHUTDOWN``, ``BALLOON_CHANGE``…), data and QEMU's timestamp (s)."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0


class EventLog:
    """Thread-safe, bounded record of a VM's QMP events, oldest first."""

    def __init__(self, limit: int = 10_000) -> None:
        self._events: list[Event] = []
        self._dropped = 0
        self._limit = limit
        self._changed = threading.Condition()

    def add(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            if len(self._events) > self._limit:
                drop = len(self._events) - self._limit
                del self._events[:drop]
                self._dropped += drop
            self._changed.notify_all()

    @property
    def count(self) -> int:
        """How many events have arrived so far (a cursor for :meth:`since` and :meth:`wait_for`)."""
        with self._changed:
            return self._dropped + len(self._events)

    def since(self, cursor: int = 0) -> list[Event]:
        """Events that arrived after ``cursor`` (see :attr:`count`)."""
        with self._changed:
            return list(self._events[max(0, cursor - self._dropped):])

    def wait_for(self, name: str, timeout: float, cursor: int = 0) -> Event | None:
        """The first event called ``name`` after ``cursor``, waiting up to ``timeout`` s; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events[max(0, cursor - self._dropped):]:
                    if event.name == name:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)


class _RecordingListener(EventListener):  # type: ignore[misc]
    """Hands every event to the log instead of queueing it for an ``async for`` consumer."""

    def __init__(self, log: EventLog) -> None:
        super().__init__()
        self._log = log

    async def put(self, event: Mapping[str, Any]) -> None:
        stamp = event.get("timestamp", {})
        when = float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6
        self._log.add(Event(str(event["event"]), dict(event.get("data", {})), when))


class QMPChannel:
    """The QMP connection of one VM.

    :param name: the VM's name (for logs).
    :param describe_failure: returns why the connection may have dropped (QEMU's exit status and stderr).
    """

    def __init__(self, name: str, describe_failure: Callable[[], str]) -> None:
        self.name = name
        self.events = EventLog()
        self._describe_failure = describe_failure
        self._client: QMPClient | None = None

    def connect(self, sock: socket.socket, timeout: float) -> None:
        """Greet QEMU over ``sock`` (already connected to the fd QEMU inherited)."""
        run_sync(self._connect(sock), timeout, "QMP connect")

    async def _connect(self, sock: socket.socket) -> None:
        client = QMPClient(self.name)
        client.register_listener(_RecordingListener(self.events))
        try:
            await client.connect(sock)
        except Exception as exc:
            raise self._failure("QMP connect", {}, exc) from None
        self._client = client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def execute(self, command: str, args: Mapping[str, Any] | None = None,
                timeout: float = DEFAULT_QMP_TIMEOUT) -> Any:
        """Run a QMP command and return its ``return`` value.

        :raises VlabError: if QEMU refuses it, dies, or does not answer within ``timeout``.
        """
        return run_sync(self._execute(command, args), timeout, f"QMP {command}")

    async def aexecute(self, command: str, args: Mapping[str, Any] | None = None,
                       timeout: float = DEFAULT_QMP_TIMEOUT) -> Any:
        """:meth:`execute` for ``await`` from any event loop."""
        return await run_async(asyncio.wait_for(self._execute(command, args), timeout))

    async def _execute(self, command: str, args: Mapping[str, Any] | None) -> Any:
        client = self._client
        if client is None:
            raise VlabError("QMP is not connected", field=command, fix="start the VM first: vm.start()")
        try:
            return await client.execute(command, dict(args) if args else None)
        except ExecuteError as exc:
            raise VlabError(f"QEMU refused the command: {exc.error.error.desc}", field=command,
                            value=dict(args or {}), fix="check the command's arguments in QEMU's QMP reference",
                            detail=f"error class {exc.error_class}") from None
        except Exception as exc:
            raise self._failure(command, args or {}, exc) from None

    def _failure(self, command: str, args: Mapping[str, Any], exc: BaseException) -> VlabError:
        return VlabError(
            f"lost QEMU while running the command ({type(exc).__name__}: {exc})", field=command,
            value=dict(args) or None, fix="see why QEMU stopped below; restart the VM with vm.start()",
            detail=self._describe_failure(),
        )

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect (tolerating QEMU already gone: ``disconnect()`` may raise ``EOFError`` after ``quit``)."""
        client, self._client = self._client, None
        if client is not None:
            # a disconnect that times out leaves nothing behind that matters: QEMU is being killed anyway
            with contextlib.suppress(VlabError):
                run_sync(_quiet_disconnect(client), timeout, "QMP disconnect")


async def _quiet_disconnect(client: QMPClient) -> None:
    try:
        await client.disconnect()
    except (EOFError, ConnectionError, OSError):
        pass
    except Exception:  # qemu.qmp re-raises whatever ended the session; the session is over either way
        pass
