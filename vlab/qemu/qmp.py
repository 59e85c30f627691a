"""QMP for one VM: a ``qemu.qmp`` client on vlab's loop, a direct synchronous monitor, and an event log.

QEMU gets two QMP monitors, both on sockets it inherited (no path, no connect
retry: the peer exists before QEMU even starts). :class:`QMPChannel` owns

* a :class:`qemu.qmp.QMPClient` on the loop of :mod:`vlab.qemu.loop`, which
  records every event and serves :meth:`QMPChannel.aexecute` (``await`` from
  any loop, e.g. Jupyter's);
* a plain blocking monitor (:class:`_SyncMonitor`) for :meth:`QMPChannel.execute`,
  used by the calling thread itself: no event loop is involved at all, so it
  works inside Jupyter and costs no thread hand-off.

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
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient

from vlab.errors import VlabError
from vlab.qemu.fields import check_seconds
from vlab.qemu.loop import run_async, run_sync

__all__ = ["QMPChannel", "Event", "EventLog", "DEFAULT_QMP_TIMEOUT", "EVENT_LIMIT"]

#: Seconds a QMP command may take before vlab stops waiting (migration and snapshots poll instead).
DEFAULT_QMP_TIMEOUT = 30.0
_MAX_MESSAGE = 64 * 1024 * 1024  # one QMP line; the largest real replies (block node lists) are far smaller


@dataclass(frozen=True)
class Event:
    """A QMP event: its name (``SHUTDOWN``, ``BALLOON_CHANGE``…), data and QEMU's timestamp (s)."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0


#: Events a VM keeps (older ones are dropped and counted: a guest can emit events without end).
EVENT_LIMIT = 2000


class EventLog:
    """Thread-safe, bounded record of a VM's QMP events, oldest first.

    Keeps the last ``limit`` events; :attr:`dropped` counts the older ones let go. Cursors (:attr:`count`)
    keep counting across drops, so a reader that falls behind sees a gap, never a repeat.
    """

    def __init__(self, limit: int = EVENT_LIMIT) -> None:
        self._events: list[Event] = []
        self._dropped = 0
        self._limit = limit
        self._changed = threading.Condition()

    def add(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            if len(self._events) > self._limit + self._limit // 4:  # drop in batches: amortised O(1)
                drop = len(self._events) - self._limit
                del self._events[:drop]
                self._dropped += drop
            self._changed.notify_all()

    @property
    def dropped(self) -> int:
        """How many of the oldest events were let go to keep the log bounded."""
        with self._changed:
            return self._dropped + max(0, len(self._events) - self._limit)

    @property
    def count(self) -> int:
        """How many events have arrived so far (a cursor for :meth:`since` and :meth:`wait_for`)."""
        with self._changed:
            return self._dropped + len(self._events)

    def since(self, cursor: int = 0) -> list[Event]:
        """Events that arrived after ``cursor`` (see :attr:`count`), at most the last ``limit``."""
        with self._changed:
            kept = self._events[-self._limit:]
            first = self._dropped + len(self._events) - len(kept)
            return list(kept[max(0, cursor - first):])

    def wait_new(self, cursor: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for an event after ``cursor``; True if there is one."""
        with self._changed:
            return self._changed.wait_for(lambda: self._dropped + len(self._events) > cursor, timeout)

    def wait_contains(self, stamps: list[tuple[str, float]], timeout: float) -> bool:
        """Wait until events with these (name, timestamp) pairs are in the log (they travel on another socket)."""
        def present() -> bool:
            recent = {(event.name, event.timestamp) for event in self._events[-200:]}
            return all(stamp in recent for stamp in stamps)

        with self._changed:
            return self._changed.wait_for(present, timeout)

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


class _RecordingListener(EventListener):
    """Hands every event to the log (and the hook) instead of queueing it for an ``async for`` consumer."""

    def __init__(self, log: EventLog, hook: Callable[[Event], None] | None) -> None:
        super().__init__()
        self._log = log
        self._hook = hook

    async def put(self, event: Mapping[str, Any]) -> None:
        try:
            recorded = Event(str(event["event"]), dict(event.get("data") or {}), _timestamp(event))
        except (KeyError, TypeError, ValueError, AttributeError):
            return  # a malformed event must not stop the reader
        if self._hook is not None:
            self._hook(recorded)
        self._log.add(recorded)


def _no_event(_event: Mapping[str, Any]) -> bool:
    return False


def _timestamp(event: Mapping[str, Any]) -> float:
    stamp = event.get("timestamp")
    if not isinstance(stamp, Mapping):
        return 0.0
    return float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6


class QMPChannel:
    """The QMP connection of one VM.

    :param name: the VM's name (for logs).
    :param describe_failure: returns why the connection may have dropped (QEMU's exit status and stderr).
    """

    def __init__(self, name: str, describe_failure: Callable[[], str],
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.name = name
        self.events = EventLog()
        self._describe_failure = describe_failure
        self._on_event = on_event
        self._client: QMPClient | None = None
        self._sync: _SyncMonitor | None = None

    def connect(self, async_sock: socket.socket, sync_sock: socket.socket, timeout: float) -> None:
        """Greet QEMU on both monitors (sockets already connected to the fds QEMU inherited)."""
        run_sync(self._connect(async_sock), timeout, "QMP connect")
        self._sync = _SyncMonitor(sync_sock, self._failure)
        self._sync.negotiate(timeout)

    async def _connect(self, sock: socket.socket) -> None:
        client = QMPClient(self.name)
        # qemu.qmp's default listener queues every event for an `async for` nobody runs (it cannot be
        # removed): 40,000 events grew memory by 41 MiB. Let it accept none; ours records into the bounded log.
        client.events.event_filter = _no_event
        client.register_listener(_RecordingListener(self.events, self._on_event))
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
        timeout = check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        sync = self._sync
        if sync is None:
            raise VlabError("QMP is not connected", field=command, fix="start the VM first: vm.start()")
        result, seen = sync.execute(command, args, timeout)
        if seen:
            # events QEMU emitted before this reply: make them visible in the log before returning, so
            # `vm.pause(); vm.events()` shows the STOP (the recording client reads another socket)
            self.events.wait_contains(seen, min(1.0, max(0.0, deadline - time.monotonic())))
        return result

    async def aexecute(self, command: str, args: Mapping[str, Any] | None = None,
                       timeout: float = DEFAULT_QMP_TIMEOUT) -> Any:
        """:meth:`execute` for ``await`` from any event loop (runs on the ``qemu.qmp`` client).

        :raises VlabError: as :meth:`execute`, including on timeout (never a bare ``TimeoutError``).
        """
        timeout = check_seconds("timeout", timeout)
        try:
            return await run_async(asyncio.wait_for(self._execute(command, args), timeout))
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since Python 3.11
            raise VlabError(f"QEMU did not answer within {timeout:g} s", field=command, value=timeout,
                            fix="QEMU is stuck or very busy; check vm.console.tail(), or stop the VM") from None

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
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        client, self._client = self._client, None
        if client is not None:
            # a disconnect that times out leaves nothing behind that matters: QEMU is being killed anyway
            with contextlib.suppress(VlabError):
                run_sync(_quiet_disconnect(client), timeout, "QMP disconnect")


class _SyncMonitor:
    """A second QMP monitor, spoken directly on a blocking socket by the calling thread.

    Why: a synchronous call through the ``qemu.qmp`` client on vlab's loop costs two thread hand-offs
    (≈ 1.35x the async client's round trip); here the caller writes the command and reads the reply
    itself, as fast as a raw socket. Calls are serialised by a lock; each carries an ``id`` so a reply
    that arrives after a timeout is recognised and skipped. Events arrive here too and are only noted:
    the ``qemu.qmp`` client on the other monitor records them (:meth:`QMPChannel.execute` waits until it
    has, so events still appear in the log before the reply that follows them).
    """

    def __init__(self, sock: socket.socket, failure: Callable[[str, Mapping[str, Any], BaseException], VlabError]):
        self._sock = sock
        self._buffer = bytearray()  # our own line buffer: unlike makefile(), it stays consistent after a timeout
        self._failure = failure
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def negotiate(self, timeout: float) -> None:
        """Read QEMU's greeting and leave capabilities negotiation mode."""
        with self._lock:
            self._sock.settimeout(timeout)
            try:
                self._readline()
            except (OSError, EOFError, ValueError) as exc:
                raise self._failure("QMP greeting", {}, exc) from None
        self.execute("qmp_capabilities", None, timeout)

    def execute(self, command: str, args: Mapping[str, Any] | None,
                timeout: float) -> tuple[Any, list[tuple[str, float]]]:
        """Run one command; returns its ``return`` value and the (name, timestamp) of events seen meanwhile."""
        message: dict[str, Any] = {"execute": command, "id": next(self._ids)}
        seen: list[tuple[str, float]] = []
        if args:
            message["arguments"] = dict(args)
        try:
            data = json.dumps(message).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise VlabError(f"the arguments cannot be sent as JSON ({exc})", field=command,
                            value=repr(args)[:80], fix="pass str, int, float, bool, None, lists and dicts") from None
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):  # another thread's command is still waiting for QEMU
            raise VlabError(f"QEMU did not answer within {timeout:g} s (another command was still pending)",
                            field=command, value=timeout, fix="QEMU is stuck or very busy; stop the VM")
        try:
            self._sock.settimeout(max(0.001, deadline - time.monotonic()))
            self._sock.sendall(data)
            reply = self._read_reply(message["id"], deadline, seen)
        except TimeoutError:
            raise VlabError(f"QEMU did not answer within {timeout:g} s", field=command, value=timeout,
                            fix="QEMU is stuck or very busy; check vm.console.tail(), or stop the VM") from None
        except (OSError, EOFError, ValueError) as exc:
            raise self._failure(command, args or {}, exc) from None
        finally:
            self._lock.release()
        if "error" in reply:
            error = reply["error"]
            raise VlabError(f"QEMU refused the command: {error.get('desc')}", field=command,
                            value=dict(args or {}), fix="check the command's arguments in QEMU's QMP reference",
                            detail=f"error class {error.get('class')}")
        return reply.get("return"), seen

    def _read_reply(self, wanted: int, deadline: float, seen: list[tuple[str, float]]) -> dict[str, Any]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            message = json.loads(self._readline())
            if not isinstance(message, dict):
                raise ValueError(f"QEMU sent a QMP message that is not an object: {str(message)[:80]}")
            if message.get("id") == wanted:
                return dict(message)
            if "event" in message:
                seen.append((str(message["event"]), _timestamp(message)))
            # else: a late reply to a command that timed out

    def _readline(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError("QEMU closed the monitor")
            self._buffer += chunk
            if len(self._buffer) > _MAX_MESSAGE:
                self._buffer.clear()
                raise ValueError(f"QEMU sent a QMP message longer than {_MAX_MESSAGE} bytes")
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def close(self) -> None:
        self._sock.close()


async def _quiet_disconnect(client: QMPClient) -> None:
    try:
        await client.disconnect()
    except (EOFError, ConnectionError, OSError):
        pass
    except Exception:  # qemu.qmp re-raises whatever ended the session; the session is over either way
        pass
