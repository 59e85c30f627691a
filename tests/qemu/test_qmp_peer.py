"""vlab's QMP client and loop against a fake QMP peer on a socket pair: fast, and for protocol faults only.

A fake peer is used here because real QEMU never sends these faults: replies with unknown ids, late replies
after a timeout, malformed or non-object JSON, a disconnect in the middle of a command, or 40,000 events in a
burst. Everything QEMU really does (freezing, dying, pausing) is tested with real QEMU in test_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vlab.errors import VlabError
from vlab.qemu.loop import call_in_loop_thread, in_loop_thread, run_sync
from vlab.qemu.qmp import EVENT_LIMIT, Event, EventLog, QMPChannel

GREETING = b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}\n'
Handler = Callable[[dict[str, Any], socket.socket], None]


def _event(name: str, seconds: int = 1) -> bytes:
    return json.dumps({"event": name, "data": {}, "timestamp": {"seconds": seconds, "microseconds": 0}}).encode()


class FakePeer:
    """One QMP monitor's far end: greets, accepts capabilities, then hands each command to ``handler``."""

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        self.sock = sock
        self.handler = handler
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.sendall(GREETING)
        buffer = ""
        decoder = json.JSONDecoder()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data.decode()
            while buffer.strip():  # qemu.qmp sends objects without a newline: decode one after the other
                try:
                    message, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                if message["execute"] == "qmp_capabilities":
                    self.reply(message, {})
                else:
                    self.handler(message, self.sock)

    def reply(self, message: dict[str, Any], value: Any) -> None:
        payload = {"return": value}
        if "id" in message:
            payload["id"] = message["id"]
        self.sock.sendall(json.dumps(payload).encode() + b"\n")


def _answer(value: Any) -> Handler:
    def handler(message: dict[str, Any], sock: socket.socket) -> None:
        sock.sendall(json.dumps({"return": value, "id": message.get("id")}).encode() + b"\n")
    return handler


@pytest.fixture
def channel() -> Iterator[Callable[[Handler, Handler | None], QMPChannel]]:
    """Make a connected QMPChannel whose sync monitor runs ``handler`` (and async monitor ``async_handler``)."""
    opened: list[QMPChannel] = []
    sockets: list[socket.socket] = []

    def make(handler: Handler, async_handler: Handler | None = None) -> QMPChannel:
        a_ours, a_theirs = socket.socketpair()
        s_ours, s_theirs = socket.socketpair()
        sockets.extend([a_theirs, s_theirs])
        FakePeer(a_theirs, async_handler or _answer({}))
        FakePeer(s_theirs, handler)
        qmp = QMPChannel("fake", lambda: "the fake peer went away")
        qmp.connect(a_ours, s_ours, timeout=5)
        opened.append(qmp)
        return qmp

    yield make
    for qmp in opened:
        qmp.close(timeout=2)
    for sock in sockets:
        sock.close()


def test_request_ids_match_replies_and_late_replies_are_skipped(channel: Any) -> None:
    held: list[dict[str, Any]] = []

    def handler(message: dict[str, Any], sock: socket.socket) -> None:
        if message["execute"] == "slow":
            held.append(message)  # answered only with the next command, i.e. after the caller gave up
            return
        for late in held:
            sock.sendall(json.dumps({"return": "LATE", "id": late["id"]}).encode() + b"\n")
        held.clear()
        sock.sendall(json.dumps({"return": message["execute"], "id": message["id"]}).encode() + b"\n")

    qmp = channel(handler)
    started = time.monotonic()
    with pytest.raises(VlabError) as caught:
        qmp.execute("slow", timeout=0.3)
    assert time.monotonic() - started < 1.0 and "did not answer within 0.3 s" in caught.value.problem
    assert qmp.execute("next") == "next"  # not the late "LATE"


def test_events_before_a_reply_are_seen_and_malformed_ones_do_not_stop_the_reader(channel: Any) -> None:
    def sync(message: dict[str, Any], sock: socket.socket) -> None:
        sock.sendall(_event("STOP") + b"\n" + json.dumps({"return": {}, "id": message["id"]}).encode() + b"\n")

    def asynchronous(message: dict[str, Any], sock: socket.socket) -> None:
        sock.sendall(b'{"event": "WEIRD", "timestamp": "not a dict"}\n{"event": 5, "data": "not a dict"}\n'
                     + _event("STOP") + b"\n")
        sock.sendall(json.dumps({"return": {}, "id": message.get("id")}).encode() + b"\n")

    qmp = channel(sync, asynchronous)
    run_sync(qmp.aexecute("provoke", timeout=2), 5, "provoke")
    qmp.execute("stop")
    assert [e.name for e in qmp.events.since(0)] == ["WEIRD", "STOP"]


@pytest.mark.parametrize("reply", [b"this is not json\n", b"[1, 2, 3]\n", b'"just a string"\n'])
def test_malformed_replies_become_a_vlab_error(channel: Any, reply: bytes) -> None:
    qmp = channel(lambda message, sock: sock.sendall(reply))
    with pytest.raises(VlabError) as caught:
        qmp.execute("query-status", timeout=2)
    assert caught.value.field == "query-status" and "lost QEMU" in caught.value.problem
    assert "the fake peer went away" in (caught.value.detail or "")


def test_a_disconnect_in_the_middle_of_a_command(channel: Any) -> None:
    qmp = channel(lambda message, sock: sock.shutdown(socket.SHUT_RDWR))
    started = time.monotonic()
    with pytest.raises(VlabError, match="lost QEMU"):
        qmp.execute("query-status", timeout=5)
    assert time.monotonic() - started < 1


def test_async_timeout_is_a_vlab_error_not_a_bare_timeout_error(channel: Any) -> None:
    qmp = channel(_answer({}), lambda message, sock: None)  # the async monitor never answers

    async def call() -> Any:
        return await qmp.aexecute("query-status", timeout=0.3)

    started = time.monotonic()
    with pytest.raises(VlabError) as caught:
        asyncio.run(call())
    assert time.monotonic() - started < 1.5
    assert caught.value.field == "query-status" and "0.3 s" in caught.value.problem


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0, -1, "5", True, None])
def test_timeouts_that_would_never_end_or_make_no_sense_are_refused(channel: Any, timeout: Any) -> None:
    qmp = channel(_answer({}))
    with pytest.raises(VlabError) as caught:
        qmp.execute("query-status", timeout=timeout)
    assert caught.value.field == "timeout"


def test_arguments_that_are_not_json_are_refused_before_sending(channel: Any) -> None:
    qmp = channel(_answer({}))
    with pytest.raises(VlabError, match="JSON"):
        qmp.execute("x", {"bad": object()})
    assert qmp.execute("still-works") == {}


def test_forty_thousand_events_keep_the_last_ones_with_bounded_memory() -> None:
    log = EventLog()
    tracemalloc.start()
    for i in range(1000):
        log.add(Event("E", {"i": i}, float(i)))
    base, _ = tracemalloc.get_traced_memory()
    for i in range(40_000):
        log.add(Event("E", {"i": i}, float(i)))
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert log.count == 41_000
    kept = log.since(0)
    assert len(kept) == EVENT_LIMIT and kept[-1].data["i"] == 39_999
    assert log.dropped == 41_000 - EVENT_LIMIT
    assert log.since(log.count - 3)[0].data["i"] == 39_997  # cursors keep counting across drops
    assert grown - base < 2 * 1024 * 1024


def test_the_loop_thread_refuses_a_blocking_call_on_itself() -> None:
    assert call_in_loop_thread(in_loop_thread) is True

    def inner() -> None:
        coroutine = asyncio.sleep(0)
        run_sync(coroutine, 1, "nested")

    with pytest.raises(RuntimeError, match="deadlock"):
        call_in_loop_thread(inner)
