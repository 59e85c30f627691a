"""Benchmarks for the fault paths of vlab.qemu: how close calls on a frozen QEMU come to their timeout, the
console's capture throughput and linearity, the event log's memory under a flood, the manifest check's cost.

Run: ``.venv/bin/python bench/bench_vm_faults.py [--quick]``

Every figure is a ratio against a baseline measured in the same run:

* frozen QEMU (real ``SIGSTOP``): seconds a call took / the timeout it was given (target ≤ 1.1 for QMP calls;
  ``console.run`` adds its recovery budget, at most 2 s, so it is reported against timeout + that budget);
* console capture: ``Console.run`` collecting N MiB from a socket pair vs a bare ``recv`` loop reading the same
  bytes (target ≤ 3x), and the 50 MiB time / 10 MiB time (target ≈ 5: linear);
* event flood: memory that 40,000 events leave behind in vlab's bounded log vs an unbounded list (what
  qemu.qmp's default listener did), both measured with tracemalloc;
* kernel check at VM start: the first (sha256) check vs the cached one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.qemu import VM, VMConfig
from vlab.qemu.console import Console, _recovery_budget
from vlab.qemu.guest_files import verify_guest_file
from vlab.qemu.qmp import Event, EventLog

TARGET_FROZEN_RATIO = 1.1
TARGET_CAPTURE_OVER_RAW = 3.0
LINE = b"y" * 1023 + b"\r\n"


def frozen_calls(repeats: int) -> None:
    print("== calls on a frozen QEMU (SIGSTOP), seconds taken / timeout ==")
    with VM(VMConfig(accel="tcg")) as vm:
        assert vm.pid is not None
        calls: dict[str, tuple[float, Callable[[float], Any], float]] = {
            "vm.qmp('query-status')": (1.0, lambda t: vm.qmp("query-status", timeout=t), 0.0),
            "vm.status()": (1.0, lambda t: vm.status(timeout=t), 0.0),
            "vm.balloon('128M')": (2.0, lambda t: vm.balloon("128M", timeout=t), 0.0),
            "vm.snapshot_save('b')": (2.0, lambda t: vm.snapshot_save("b", timeout=t), 0.0),
            "vm.console.run('echo')": (1.0, lambda t: vm.console.run("echo", timeout=t), _recovery_budget(1.0)),
        }
        for name, (timeout, call, budget) in calls.items():
            ratios = []
            for _ in range(repeats):
                os.kill(vm.pid, signal.SIGSTOP)
                started = time.monotonic()
                try:
                    call(timeout)
                except VlabError:
                    pass
                finally:
                    took = time.monotonic() - started
                    os.kill(vm.pid, signal.SIGCONT)
                ratios.append(took / (timeout + budget))
                time.sleep(0.2)
            vm.console.run("true", timeout=30)  # back in sync before the next kind of call
            extra = f" (+{budget:g} s recovery budget)" if budget else ""
            print(f"  {name:28s} timeout {timeout:g} s{extra}: median ratio {statistics.median(ratios):.3f} "
                  f"(max {max(ratios):.3f}; target <= {TARGET_FROZEN_RATIO})")


def _serve(sock: socket.socket, blocks: int) -> None:
    pending = b""
    while b"\n" not in pending:
        pending += sock.recv(65536)
    tag = re.search(rb"=VLAB (\S+)B;", pending)
    assert tag is not None
    sock.sendall(b"=VLAB" + tag.group(1) + b"B\r\n")
    chunk = LINE * 64
    for _ in range(blocks):
        sock.sendall(chunk)
    sock.sendall(b"\r\n=VLAB" + tag.group(1) + b"E:0\r\nvlab# ")


def console_capture(mib: int) -> float:
    ours, guest = socket.socketpair()
    console = Console(ours, describe_failure=lambda: "")
    blocks = mib * 1024 * 1024 // (len(LINE) * 64)
    server = threading.Thread(target=_serve, args=(guest, blocks), daemon=True)
    server.start()
    try:
        started = time.perf_counter()
        result = console.run("produce", timeout=600)
        took = time.perf_counter() - started
        assert len(result.output) == blocks * 64 * (len(LINE) - 1)
        return took
    finally:
        server.join()
        guest.close()
        console.close()
        ours.close()


def raw_read(mib: int) -> float:
    ours, guest = socket.socketpair()
    total = mib * 1024 * 1024 // (len(LINE) * 64) * len(LINE) * 64
    def send() -> None:
        for _ in range(total // (len(LINE) * 64)):
            guest.sendall(LINE * 64)

    sender = threading.Thread(target=send, daemon=True)
    started = time.perf_counter()
    sender.start()
    got, parts = 0, []
    while got < total:
        data = ours.recv(65536)
        parts.append(data)
        got += len(data)
    b"".join(parts).replace(b"\r\n", b"\n")  # the same normalisation the console does
    took = time.perf_counter() - started
    sender.join()
    ours.close()
    guest.close()
    return took


def capture(repeats: int) -> None:
    print("== console output capture (socket pair; the guest side played by the bench) ==")
    times = {}
    for mib in (10, 50):
        ours = statistics.median(console_capture(mib) for _ in range(repeats))
        raw = statistics.median(raw_read(mib) for _ in range(repeats))
        times[mib] = ours
        print(f"  {mib} MiB: Console.run {ours:.2f} s ({mib / ours:.0f} MiB/s), bare recv loop {raw:.2f} s: "
              f"ratio {ours / raw:.2f} (target <= {TARGET_CAPTURE_OVER_RAW})")
    print(f"  linearity: time(50 MiB) / time(10 MiB) = {times[50] / times[10]:.2f} (linear: 5)")


def event_flood() -> None:
    print("== 40,000 QMP events, each a new object as QMP delivers them ==")

    def make(i: int) -> Event:
        return Event("RTC_CHANGE", {"offset": i, "qom-path": f"/machine/unattached/device[{i % 50}]"}, float(i))

    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    unbounded = [make(i) for i in range(40_000)]  # what qemu.qmp's default listener queue kept
    after_list, _ = tracemalloc.get_traced_memory()
    del unbounded
    start_log, _ = tracemalloc.get_traced_memory()
    log = EventLog()
    for i in range(40_000):
        log.add(make(i))
    after_log, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held_log, held_list = after_log - start_log, after_list - before
    print(f"  kept {len(log.since(0))}, dropped {log.dropped}; memory held: bounded log {held_log / 2**20:.2f} MiB "
          f"vs unbounded queue {held_list / 2**20:.2f} MiB: ratio {held_log / held_list:.3f}")


def kernel_check() -> None:
    print("== kernel check against the image manifest at VM start ==")
    from vlab.qemu.config import default_kernel

    kernel = default_kernel()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / kernel.name
        shutil.copy(kernel, copy)
        shutil.copy(kernel.parent / "manifest.json", Path(tmp) / "manifest.json")
        started = time.perf_counter()
        verify_guest_file("kernel", copy)
        first = time.perf_counter() - started
        cached = statistics.median(_timed(lambda: verify_guest_file("kernel", copy)) for _ in range(200))
    print(f"  first check (sha256 of {kernel.stat().st_size / 2**20:.1f} MiB) {first * 1000:.1f} ms, "
          f"cached {cached * 1e6:.0f} us: ratio {cached / first:.4f}")


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    capture(repeats)
    event_flood()
    kernel_check()
    frozen_calls(repeats)


if __name__ == "__main__":
    main()
