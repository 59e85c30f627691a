"""The guest's serial console (ttyS0): a byte log, pattern waits and ``run(cmd) -> CommandResult``.

QEMU's ``-serial`` chardev is one end of a socketpair; vlab keeps the other end
and reads it on the vlab loop (:mod:`vlab.qemu.loop`) into a bounded log. The
log serves three purposes: waiting for the guest's ready marker at boot,
collecting the output of :meth:`Console.run`, and giving error messages the
last lines the guest printed (:meth:`Console.tail`).

:meth:`Console.run` frames a command between two markers that the shell
*prints* but that never appear literally in what the terminal *echoes*
(``printf '%s' =VLAB 1234B`` echoes with a space, prints without), so echo,
prompts and earlier output cannot be mistaken for the command's result; the
command itself runs through ``eval`` on the same input line (so the shell
prints its prompt only after the end marker, and ``cmd &`` stays valid), and
its exit status comes from ``$?`` in the end marker. Right after boot vlab runs
``stty -echo``, which also turns off busybox's line editing, so the guest shell
reads plain lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vlab.errors import VlabError
from vlab.qemu.fields import check_int, check_seconds, check_text, shown
from vlab.qemu.loop import get_loop, run_sync

__all__ = ["Console", "CommandResult", "ConsoleClosed"]

_LOG_LIMIT = 4 * 1024 * 1024  # bytes of console output kept for tails and wait_for (run() collects its own)
_ids = itertools.count(1)
_SHELL_BANNER = re.compile(rb"BusyBox v[^\n]* built-in shell")  # what a newly started guest shell prints first
#: Longest command run() accepts: the framed line must fit the guest tty's 4096-byte line buffer.
MAX_COMMAND_BYTES = 3000



def _check_quotes(command: str) -> None:
    """Refuse a command that leaves a quote open: the guest's shell would wait for the rest of it (a
    continuation line) until the timeout, instead of failing at once."""
    try:
        shlex.split(command, comments=True, posix=True)  # a quote inside a # comment is no quote to sh either
    except ValueError as exc:
        raise VlabError(f"the command leaves a quote open ({exc}): the guest's shell would wait for the rest",
                        field="command", value=shown(command),
                        fix="close every ' and \"; put values into a command with shlex.quote(value)") from None


class ConsoleClosed(VlabError):
    """The console's socket closed (QEMU exited) while waiting for output."""


@dataclass(frozen=True)
class CommandResult:
    """What :meth:`Console.run` saw: the command's output (``\\r\\n`` normalised to ``\\n``), exit status, time.

    :ivar truncated: output bytes dropped after ``max_output`` (0: the output is complete).
    """

    command: str
    output: str
    status: int
    seconds: float
    truncated: int = 0

    @property
    def ok(self) -> bool:
        """True when the exit status is 0."""
        return self.status == 0

    def __str__(self) -> str:
        return self.output


class Console:
    """The serial console of a VM.

    :param sock: vlab's end of the socketpair whose other end QEMU uses as ttyS0.
    :param describe_failure: returns why the VM may have stopped (for errors when the console closes).
    """

    def __init__(self, sock: socket.socket, describe_failure: Callable[[], str],
                 paused_reason: Callable[[], str | None] = lambda: None) -> None:
        self._sock = sock
        self._describe_failure = describe_failure
        self._paused_reason = paused_reason
        self._capture: _Capture | None = None
        self._desynced = False
        self._log = bytearray()
        self._dropped = 0  # bytes cut from the front of _log
        self._closed = False
        self._changed = threading.Condition()
        self._run_lock = threading.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._connected: concurrent.futures.Future[None] = concurrent.futures.Future()  # the writer exists
        self._reader_task: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(self._pump(), get_loop())
        self._reader_task.add_done_callback(lambda _f: self._mark_closed())

    # -- reading ------------------------------------------------------------------------------------

    async def _pump(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._connected.set_result(None)
        while chunk := await reader.read(65536):
            self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        with self._changed:
            if self._capture is not None:
                self._capture.feed(chunk)
            self._log += chunk
            if len(self._log) > _LOG_LIMIT:
                cut = len(self._log) - _LOG_LIMIT // 2
                del self._log[:cut]
                self._dropped += cut
            self._changed.notify_all()

    def _mark_closed(self) -> None:
        if not self._connected.done():
            self._connected.set_result(None)
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        """True once QEMU closed its end (it exited) or vlab closed the console."""
        return self._closed

    @property
    def position(self) -> int:
        """Bytes received so far: a cursor for :meth:`text` and :meth:`wait_for`."""
        with self._changed:
            return self._dropped + len(self._log)

    def text(self, since: int = 0) -> str:
        """Console output received after cursor ``since`` (``\\r\\n`` → ``\\n``)."""
        with self._changed:
            data = bytes(self._log[max(0, since - self._dropped):])
        return _clean(data)

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the guest printed (for error messages and dashboards), without the markers
        :meth:`run` frames each command with."""
        with self._changed:
            data = bytes(self._log[-16384:])
        text = _FRAMING.sub("", _clean(data))
        kept = [line for line in text.rstrip().splitlines() if line.strip() not in ("", PROMPT.strip())]
        return "\n".join(kept[-lines:])

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, since: int = 0) -> re.Match[str]:
        """Wait until console output after ``since`` matches ``pattern`` (a regex); return the match.

        :raises VlabError: on timeout, or if the console closes (QEMU exited) first.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search(_clean(bytes(self._log[max(0, since - self._dropped):])))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise ConsoleClosed(f"the console closed before {regex.pattern!r} appeared", field="console",
                                    fix="the VM stopped; see below", detail=self._details())
                if remaining <= 0:
                    raise VlabError(f"{regex.pattern!r} did not appear on the console within {timeout} s",
                                    field="console", value=timeout,
                                    fix="give it more time (timeout=...) or check the guest's output below",
                                    detail=self._details())
                self._changed.wait(min(remaining, 0.5))

    def _details(self) -> str:
        tail = self.tail()
        text = "console tail:\n" + tail if tail else "the console printed nothing"
        return text + "\n" + self._describe_failure()

    # -- writing ------------------------------------------------------------------------------------

    def send(self, text: str, timeout: float = 10.0) -> None:
        """Type ``text`` on the console as is (add ``\\n`` to press Enter).

        :raises VlabError: if QEMU does not take the bytes within ``timeout`` s (e.g. it is frozen).
        """
        if not isinstance(text, str):
            raise VlabError(f"must be a string, not {type(text).__name__}", field="text", value=shown(text),
                            fix='console.send("ls\\n")')
        timeout = check_seconds("timeout", timeout)
        run_sync(self._write(text.encode()), timeout, "console write")

    async def _write(self, data: bytes) -> None:
        if not self._connected.done():  # a run() right after the console was made
            await asyncio.wrap_future(self._connected)
        if self._closed or self._writer is None:
            raise VlabError("the console is closed", field="console", fix="start the VM first",
                            detail=self._describe_failure())
        self._writer.write(data)
        await self._writer.drain()

    def run(self, command: str, timeout: float = 30.0, *, max_output: int = 64 * 1024 * 1024) -> CommandResult:
        """Run a shell command in the guest and return its output and exit status.

        The guest shell must be idle at its prompt (one command at a time; calls are serialised). Output is
        collected as it streams in (each byte looked at once), so 10 MiB and more cost linear time; past
        ``max_output`` bytes it is cut (:attr:`CommandResult.truncated` says how much).

        If the command does not finish in time, or the caller is interrupted (Ctrl-C), vlab interrupts the
        guest command (Ctrl-C on the guest's terminal) and waits for the shell to answer again, so the
        next ``run()`` works.

        :raises VlabError: if the command is not one printable line, leaves a quote open, times out, the VM is
            paused or stops.
        """
        command = check_text("command", command, max_len=MAX_COMMAND_BYTES, allow_empty=True,
                             fix="one shell command line; for raw input use console.send()").strip()
        timeout = check_seconds("timeout", timeout)
        limit = check_int("max_output", max_output, 1, 1 << 34)
        _check_quotes(command)
        deadline = time.monotonic() + timeout
        if not self._run_lock.acquire(timeout=timeout):
            raise VlabError(f"another run() was still using the console after {timeout} s", field="command",
                            value=shown(command), fix="run commands one at a time, or pass a longer timeout")
        try:
            self._check_usable(command)
            if self._desynced:
                self._resync(max(0.05, min(5.0, deadline - time.monotonic())), command)
            return self._run_framed(command, deadline, timeout, limit)
        finally:
            self._run_lock.release()

    def _check_usable(self, command: str) -> None:
        reason = self._paused_reason()
        if reason:
            raise VlabError(f"the VM is paused ({reason}): the guest cannot run commands", field="command",
                            value=shown(command), fix="vm.resume() (after fixing the cause) and run it again")
        if self._closed:
            raise ConsoleClosed("the console is closed (QEMU exited)", field="command", value=shown(command),
                                fix="start a new VM", detail=self._describe_failure())

    def _run_framed(self, command: str, deadline: float, timeout: float, limit: int) -> CommandResult:
        tag = f"{next(_ids)}x{time.monotonic_ns() % 100000}"
        # one input line (one prompt, after the end marker); eval keeps `cmd &` and `cd` working as typed
        framed = (f"printf '%s%s\\n' =VLAB {tag}B; eval {shlex.quote(command)}; "
                  f"printf '\\n%s%s:%d\\n' =VLAB {tag}E $?\n")
        capture = _Capture(tag, limit)
        started = time.monotonic()
        with self._changed:
            self._capture = capture
        try:
            self.send(framed, timeout=max(0.05, deadline - time.monotonic()))
            outcome = self._wait_capture(capture, deadline, command)
        except BaseException:
            # timeout, Ctrl-C or any error while the command may still run: stop it and get the shell back
            with self._changed:
                self._capture = None
            with contextlib.suppress(Exception):
                self._resync(_recovery_budget(timeout), command, interrupt=True)
            raise
        finally:
            with self._changed:
                self._capture = None
        if outcome == "shell-exit":
            self._restore_shell(5.0)
            raise VlabError("the guest shell exited during the command (the guest's init started a new one)",
                            field="command", value=shown(command),
                            fix="don't end the shell (exit/exec); run it in a subshell: sh -c '…; exit 3'")
        if outcome == "timeout":
            try:
                self._resync(_recovery_budget(timeout), command, interrupt=True)
            except VlabError as exc:
                raise VlabError(f"the command did not finish within {timeout:g} s, and the shell did not answer "
                                "Ctrl-C in time (the next run() tries again)", field="command",
                                value=shown(command), fix=exc.fix, detail=exc.detail) from None
            raise VlabError(f"the command did not finish within {timeout:g} s; vlab interrupted it (Ctrl-C)",
                            field="command", value=shown(command),
                            fix="give it more time (timeout=...), or run it in the background (cmd &)",
                            detail=self._details())
        assert capture.status is not None
        return CommandResult(command, _clean(bytes(capture.output)), capture.status, time.monotonic() - started,
                             capture.truncated)

    def _wait_capture(self, capture: _Capture, deadline: float, command: str) -> str:
        """Wait until the end marker: ``done``, ``timeout`` or ``shell-exit``; raises if paused or closed."""
        with self._changed:
            while capture.status is None:
                if self._closed:
                    raise ConsoleClosed("the console closed while the command ran", field="command",
                                        value=shown(command), fix="the VM stopped; see below",
                                        detail=self._details())
                if capture.shell_exited:
                    return "shell-exit"
                if capture.probe is None and capture.looks_restarted(quiet_for=0.5):
                    # a new shell's banner and prompt, then silence: ask the shell. A new shell runs the probe
                    # at once; the old one (still running the command) only after its end marker
                    capture.probe = f"=VLAB{capture.tag}P".encode()
                    self._changed.release()
                    try:
                        self.send(f"printf '%s%s\\n' =VLAB {capture.tag}P\n", timeout=2.0)
                    finally:
                        self._changed.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._changed.release()
                try:
                    self._check_usable(command)
                finally:
                    self._changed.acquire()
                self._changed.wait(min(remaining, 0.2))
        return "done"

    def _resync(self, budget: float, command: str, interrupt: bool = True) -> None:
        """Interrupt whatever runs in the guest shell and wait until it answers a fresh marker."""
        self._desynced = True
        tag = f"{next(_ids)}x{time.monotonic_ns() % 100000}S"
        cursor = self.position
        if interrupt:
            self.send("\x03", timeout=budget)
            time.sleep(0.05)
        marker = re.compile(re.escape(f"=VLAB{tag}"))
        deadline = time.monotonic() + budget
        while True:
            # asked again each second: a shell that crashed and was respawned meanwhile drops input sent
            # while it starts, and answers only a later question
            self.send(f"printf '%s%s\\n' =VLAB {tag}\n", timeout=max(0.05, deadline - time.monotonic()))
            try:
                self.wait_for(marker, max(0.05, min(1.0, deadline - time.monotonic())), since=cursor)
                break
            except VlabError:
                if time.monotonic() >= deadline:
                    raise VlabError("the guest shell did not answer after the command was interrupted",
                                    field="command", value=shown(command), fix="the guest command ignores "
                                    "Ctrl-C; stop the VM (vm.stop()) or retry: the next run() tries again",
                                    detail=self._details()) from None
        if _SHELL_BANNER.search(self.text(cursor).encode(errors="replace")):  # a new shell echoes again
            self._restore_shell(max(0.5, deadline - time.monotonic()))
        self._desynced = False

    def _restore_shell(self, timeout: float) -> None:
        """A fresh shell echoes and edits lines again: turn that off as after boot."""
        self.send("stty -echo\n", timeout)
        time.sleep(0.2)

    def close(self) -> None:
        """Stop reading and close vlab's end of the socket."""
        if not self._reader_task.done():
            self._reader_task.cancel()
        with contextlib.suppress(VlabError):
            run_sync(self._close_writer(), 5.0, "console close")
        self._sock.close()

    async def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()


#: The guest shell's prompt (set by vm-images/linux/init).
PROMPT = "vlab# "
#: What :meth:`Console.run` adds to the output: the begin/end markers (``=VLAB<tag>B``, ``=VLAB<tag>E:<rc>``) and,
#: for a command sent while the terminal still echoes (the ``stty -echo`` at boot), the echoed framed command line,
#: which the terminal may have wrapped anywhere.
_FRAMING = re.compile(r"printf '%s%s\\n' =VLAB.*?E\s*\$\s*\?|=VLAB[0-9A-Za-z]+(?:B|S|P|E:-?\d+)", re.S)


def _recovery_budget(timeout: float) -> float:
    """Seconds to get the shell back after a timeout: small, so run() returns close to its timeout."""
    return max(0.5, min(2.0, timeout / 2))


def _clean(data: bytes) -> str:
    """Decode console bytes: ``\\r\\n`` → ``\\n``, stray ``\\r`` and terminal queries dropped."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return text.replace("\x1b[6n", "").replace("\r", "")


class _Capture:
    """One run()'s output, cut out of the byte stream as it arrives (each byte scanned once).

    Before the begin marker only a short tail is kept (echo, prompts); after it the output grows until the
    end marker ``\\n=VLAB<tag>E:<status>`` is found, searched only in the newly arrived bytes. Past ``limit``
    the middle is dropped (the end marker can still be found in the kept tail).
    """

    _KEEP = 256  # bytes kept at the end for markers split across chunks

    def __init__(self, tag: str, limit: int) -> None:
        self.tag = tag
        self.probe: bytes | None = None  # set once vlab asked whether a new shell is at the prompt
        self.shell_exited = False
        self._begin = f"=VLAB{tag}B".encode()
        self._end = re.compile(rb"\n=VLAB" + re.escape(tag.encode()) + rb"E:(-?\d+)\r?\n")
        self._limit = limit
        self._pre = bytearray()
        self._started = False
        self._buffer = bytearray()
        self._scanned = 0
        self._dropped = 0
        self._banner_at: int | None = None
        self._last_data = time.monotonic()
        self.status: int | None = None
        self.output = bytearray()
        self.truncated = 0

    def feed(self, chunk: bytes) -> None:
        if self.status is not None:
            return
        self._last_data = time.monotonic()
        if not self._started:
            self._pre += chunk
            at = self._pre.find(self._begin)
            newline = self._pre.find(b"\n", at + len(self._begin)) if at >= 0 else -1
            if newline < 0:
                del self._pre[: max(0, len(self._pre) - self._KEEP)]
                return
            chunk, self._started = bytes(self._pre[newline + 1:]), True
            self._pre = bytearray()
        self._buffer += chunk
        start = max(0, self._scanned - self._KEEP)
        match = self._end.search(self._buffer, start)
        if self._banner_at is None and _SHELL_BANNER.search(self._buffer, start):
            self._banner_at = self._dropped + len(self._buffer)
        if match is None and self.probe is not None and self._buffer.find(self.probe, start) >= 0:
            self.shell_exited = True  # the probe ran before the end marker: the command's shell is gone
        self._scanned = len(self._buffer)
        if match is not None:
            end = match.start()
            if end > 0 and self._buffer[end - 1: end] == b"\r":  # the tty's "\r\n" before the marker line
                end -= 1
            self.output = self._buffer[: max(0, min(end, self._limit))]
            self.truncated = self._dropped + max(0, end - self._limit)
            self.status = int(match.group(1))
            return
        if len(self._buffer) > self._limit + (1 << 20):  # drop the middle in big steps: amortised linear
            cut = len(self._buffer) - self._KEEP - self._limit
            del self._buffer[self._limit: self._limit + cut]
            self._dropped += cut
            self._scanned = len(self._buffer)

    def looks_restarted(self, quiet_for: float) -> bool:
        """A shell banner, then the prompt, then nothing for ``quiet_for`` s: maybe a new shell, maybe output.

        Only a suspicion: :meth:`Console.run` then sends a probe command to tell the two apart.
        """
        return (self._banner_at is not None and self._buffer.rstrip().endswith(PROMPT.strip().encode())
                and time.monotonic() - self._last_data > quiet_for)

