"""The serial console on a real socket pair (the guest side played by the test): framing never shows in tails."""

from __future__ import annotations

import socket
import time

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
