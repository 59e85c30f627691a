"""The serial console on a real socket pair (the guest side played by the test): framing never shows in tails."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vlab.qemu.console import Console

ECHOED_BOOT = (
    b"VLAB-READY\r\n"
    b"vlab# printf '%s%s\\n' =VLAB 1x3B; eval 'stty -echo'; printf '\\n%s%s:%d\\n' =V\r\n"  # wrapped by the tty
    b"LAB 1x3E $?\r\n"
    b"=VLAB1x3B\r\n\r\n=VLAB1x3E:0\r\n"
    b"vlab# =VLAB2x9B\r\nhello from the guest\r\n=VLAB2x9E:0\r\nvlab# "
)


def test_tail_shows_guest_output_without_vlab_framing_or_prompts() -> None:
    ours, guest = socket.socketpair()
    console = Console(ours, describe_failure=lambda: "")
    try:
        guest.sendall(ECHOED_BOOT)
        deadline = time.monotonic() + 5
        while "hello from the guest" not in console.text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert console.tail(10) == "VLAB-READY\nhello from the guest"
        assert "=VLAB" in console.text()  # the raw log keeps everything: only the tail is for people
    finally:
        guest.close()
        console.close()
        ours.close()


class ScriptedGuest:
    """The guest side of the console socket, played by the test: answers each framed run() line.

    Used where a real guest cannot go: its UART moves ~65 KB/s under TCG, so outputs of tens of MiB are
    only practical from this side of the same Console code.
    """

    def __init__(self, sock: socket.socket, output: Callable[[], Iterator[bytes]], status: int = 0) -> None:
        self.sock = sock
        self.output = output
        self.status = status
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        pending = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                match = re.search(rb"=VLAB (\S+)B;", line)
                if match:
                    tag = match.group(1)
                    self.sock.sendall(b"=VLAB" + tag + b"B\r\n")
                    for chunk in self.output():
                        self.sock.sendall(chunk)
                    self.sock.sendall(b"\r\n=VLAB" + tag + b"E:%d\r\nvlab# " % self.status)


@pytest.fixture
def console_pair() -> Iterator[tuple[Console, socket.socket]]:
    ours, guest = socket.socketpair()
    console = Console(ours, describe_failure=lambda: "")
    try:
        yield console, guest
    finally:
        guest.close()
        console.close()
        ours.close()


@pytest.mark.parametrize("mib", [10, 50])
def test_tens_of_mib_of_output_arrive_whole_in_linear_time(console_pair: tuple[Console, socket.socket],
                                                          mib: int) -> None:
    console, guest = console_pair
    size = mib * 1024 * 1024
    payload = (b"y" * 1023 + b"\r\n") * 64  # 64 KiB of lines as the tty sends them
    ScriptedGuest(guest, lambda: iter([payload] * (size // len(payload))))
    result = console.run("produce", timeout=120)
    expected = size // len(payload) * len(payload) - size // len(payload) * 64  # every \r\n became \n
    assert result.ok and result.truncated == 0 and len(result.output) == expected
    assert result.output.count("\n") == size // len(payload) * 64


def test_run_output_with_the_banner_and_a_prompt_is_the_commands(console_pair: tuple[Console, socket.socket]) -> None:
    console, guest = console_pair
    text = b"BusyBox v1.35.0 (Debian) built-in shell (ash)\r\nEnter 'help' for a list of built-in commands.\r\nvlab# "
    ScriptedGuest(guest, lambda: iter([text]))
    assert console.run("cat banner.txt").output.startswith("BusyBox v1.35.0")
