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
from vlab.qemu.loop import get_loop, run_sync

__all__ = ["Console", "CommandResult", "ConsoleClosed"]

_LOG_LIMIT = 4 * 1024 * 1024  # bytes of console output kept (a run() longer than this is cut)
_ids = itertools.count(1)
_SHELL_BANNER = r"BusyBox v[^\n]* built-in shell"  # what a newly started guest shell prints first


class ConsoleClosed(VlabError):
    """The console's socket closed (QEMU exited) while waiting for output."""


@dataclass(frozen=True)
class CommandResult:
    """What :meth:`Console.run` saw: the command's output (``\\r\\n`` normalised to ``\\n``), exit status, time."""

    command: str
    output: str
    status: int
    seconds: float

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

    def __init__(self, sock: socket.socket, describe_failure: Callable[[], str]) -> None:
        self._sock = sock
        self._describe_failure = describe_failure
        self._log = bytearray()
        self._dropped = 0  # bytes cut from the front of _log
        self._closed = False
        self._changed = threading.Condition()
        self._run_lock = threading.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(self._pump(), get_loop())
        self._reader_task.add_done_callback(lambda _f: self._mark_closed())

    # -- reading ------------------------------------------------------------------------------------

    async def _pump(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        while chunk := await reader.read(65536):
            self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        with self._changed:
            self._log += chunk
            if len(self._log) > _LOG_LIMIT:
                cut = len(self._log) - _LOG_LIMIT // 2
                del self._log[:cut]
                self._dropped += cut
            self._changed.notify_all()

    def _mark_closed(self) -> None:
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
        """Type ``text`` on the console as is (add ``\\n`` to press Enter)."""
        run_sync(self._write(text.encode()), timeout, "console write")

    async def _write(self, data: bytes) -> None:
        if self._closed or self._writer is None:
            raise VlabError("the console is closed", field="console", fix="start the VM first",
                            detail=self._describe_failure())
        self._writer.write(data)
        await self._writer.drain()

    def run(self, command: str, timeout: float = 30.0) -> CommandResult:
        """Run a shell command in the guest and return its output and exit status.

        The guest shell must be idle at its prompt (one command at a time; calls are serialised).

        :raises VlabError: if the command does not finish within ``timeout`` s or the VM stops.
        """
        if "\n" in command.strip():
            raise VlabError("run() takes one command line", field="command", value=command,
                            fix="join commands with ';' or '&&', or use console.send() for raw input")
        tag = f"{next(_ids)}x{time.monotonic_ns() % 100000}"
        begin, end = f"=VLAB{tag}B", f"=VLAB{tag}E"
        # one input line (one prompt, after the end marker); eval keeps `cmd &` and `cd` working as typed
        framed = (f"printf '%s%s\\n' =VLAB {tag}B; eval {shlex.quote(command.strip())}; "
                  f"printf '\\n%s%s:%d\\n' =VLAB {tag}E $?\n")
        with self._run_lock:
            cursor = self.position
            started = time.monotonic()
            self.send(framed)
            match = self.wait_for(re.compile(
                rf"{re.escape(begin)}\n(?:(.*?)\n{re.escape(end)}:(\d+)\n|.*?{_SHELL_BANNER})", re.S),
                timeout, since=cursor)
            if match.group(2) is None:
                self._restore_shell(timeout)
                raise VlabError("the guest shell exited during the command (the guest's init started a new one)",
                                field="command", value=command,
                                fix="don't end the shell (exit/exec); run it in a subshell: sh -c '…; exit 3'")
            return CommandResult(command, match.group(1), int(match.group(2)), time.monotonic() - started)

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
_FRAMING = re.compile(r"printf '%s%s\\n' =VLAB.*?E\s*\$\s*\?|=VLAB[0-9A-Za-z]+(?:B|E:-?\d+)", re.S)


def _clean(data: bytes) -> str:
    """Decode console bytes: ``\\r\\n`` → ``\\n``, stray ``\\r`` and terminal queries dropped."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return text.replace("\x1b[6n", "").replace("\r", "")
