"""What running the student's handlers in a process of their own costs: lab 02's drive, per exit.

At grading time a helper (``drive``) runs in the helper host and the student's handlers in the student host
(:mod:`vlab.grading.hosts`); every exit is a call across, and every attribute the handler reads of the
exit or vCPU another. This boots lab 02's solution handlers on three guests both ways in the same run:

* **in process** (the baseline): ``lab.run_guest(program, handlers)``, as in the student's notebook;
* **split**: the same call as the ``drive`` helper, through :class:`~vlab.grading.hosts.Hosts` in a jail of
  mode ``none`` (the processes and the protocol as graded; namespaces add nothing per call).

It prints the exits each run's student handlers took, the whole run's microseconds per such exit both ways
and their ratio (split / in process),
and the whole drive's time (target: ≤ 1 s; a check's calls together have the call timeout, 5 s for lab 02);
then the floor under every request: a bare JSON line echoed between two processes.

    .venv/bin/python bench/bench_hosts.py [--rounds 5]

Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from vlab.grading.exports import Exported  # noqa: E402 -- after the path: run as a script from anywhere
from vlab.grading.hosts import Hosts  # noqa: E402
from vlab.grading.jail import JailSpec  # noqa: E402
from vlab.labs import trap_emulate as lab  # noqa: E402

HANDLERS = '''
def handle_csr(exit):
    vcpu, insn = exit.vcpu, exit.insn
    if insn.csr not in vcpu.csrs:
        vmm_default.csr_access(exit)
        return
    old = vcpu.csrs[insn.csr]
    if insn.writes:
        operand = insn.rs1 if insn.immediate else vcpu.read_reg(insn.rs1)
        new = {1: operand, 2: old | operand, 3: old & ~operand}[insn.op]
        vcpu.csr_write(insn.csr, new)
        if insn.csr == CSR.SATP:
            vcpu.guest.machine.address_space_changed(vcpu)
    vcpu.write_reg(insn.rd, old)


def handle_uart_read(exit):
    exit.value = UART_LSR_IDLE if exit.addr == UART_LSR else 0


def handle_uart_write(exit):
    if exit.addr == UART_THR:
        exit.vcpu.guest.uart.output.append(exit.value & 0xFF)
'''
DRIVE = '''
from vlab.labs import trap_emulate as lab


def drive(question, program):
    mine = ({"CSR_READ": handle_csr, "CSR_WRITE": handle_csr} if question == "q1"
            else {"MMIO_READ": handle_uart_read, "MMIO_WRITE": handle_uart_write})
    return lab.run_guest(program, mine).as_dict()
'''
RUNS = (("q1", "memdirty"), ("q1", lab.csr_test_program([1, 2, 3, 4], 5)), ("q3", "hello"))


def _local() -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec("from vlab.toyvmm import handlers as vmm_default\nfrom vlab.toyvmm.isa import CSR\n"
         "from vlab.toyvmm.devices import UART_LSR, UART_LSR_IDLE, UART_THR\n" + HANDLERS + DRIVE, namespace)
    return namespace


def _hosts(work: Path) -> Hosts:
    host = [sys.executable, "-I", "-m", "vlab.grading.hosts"]
    spec = JailSpec(mode="none", uid=None, address_space_mb=32768, cpu_seconds=600, file_mb=64, processes=64,
                    workdir=str(work), inner=(*host, "STUDENT"))
    exports = Exported(
        functions={name: HANDLERS for name in ("handle_csr", "handle_uart_read", "handle_uart_write")},
        modules={"vmm_default": "vlab.toyvmm.handlers"},
        imports={"CSR": ("vlab.toyvmm.isa", "CSR")},
        values={"UART_LSR": 5, "UART_LSR_IDLE": 0x60, "UART_THR": 0},
    )
    return Hosts(spec.command([*host, "HELPERS"]), 600, {"PATH": "/usr/bin:/bin"}, [DRIVE], exports)


def echo_floor(rounds: int = 2000) -> float:
    """Microseconds per round trip of a bare JSON line between two processes over a socket pair: the floor
    under every request the hosts make (what the machine's scheduler and the kernel cost, nothing of vlab's)."""
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        ours.close()
        lines = theirs.makefile("r", encoding="utf-8", newline="\n")
        for line in lines:
            theirs.sendall(line.encode())
        os._exit(0)
    theirs.close()
    lines = ours.makefile("r", encoding="utf-8", newline="\n")
    start = time.perf_counter()
    for i in range(rounds):
        message = {"id": i, "op": "getattr", "target": {"$own": i}, "operands": ["value"]}
        ours.sendall((json.dumps(message) + "\n").encode())
        json.loads(lines.readline())
    elapsed = time.perf_counter() - start
    lines.close()  # the file holds the socket open: closed too, the echo reads its end and exits
    ours.close()
    os.waitpid(child, 0)
    return elapsed / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    local = _local()
    drive = local["drive"]
    assert callable(drive)
    with tempfile.TemporaryDirectory() as work:
        hosts = _hosts(Path(work))
        try:
            hosts.call("drive", list(RUNS[0]), {})  # both processes started, modules imported
            for question, program in RUNS:
                expected = drive(question, program)
                counts = expected["exits"]
                assert isinstance(counts, dict)
                handled = ("CSR_READ", "CSR_WRITE") if question == "q1" else ("MMIO_READ", "MMIO_WRITE")
                exits = sum(counts.get(reason, 0) for reason in handled)  # the exits the student's handlers took
                times: dict[str, list[float]] = {"in process": [], "split": []}
                for _ in range(rounds):  # alternating, so that load hits both alike
                    start = time.perf_counter()
                    drive(question, program)
                    times["in process"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    got = hosts.call("drive", [question, program], {})
                    times["split"].append(time.perf_counter() - start)
                    assert got == expected, "the split run differs from the one in process"
                local_s, split_s = (statistics.median(times[k]) for k in ("in process", "split"))
                name = program if isinstance(program, str) else "csr-test"
                print(f"{name:9} {exits:6} exits  in process {local_s * 1e6 / exits:7.1f} µs/exit  "
                      f"split {split_s * 1e6 / exits:7.1f} µs/exit  ratio {split_s / local_s:5.1f}  "
                      f"drive {split_s:.2f} s")
        finally:
            hosts.close()
    print(f"floor: a bare JSON line echoed between two processes takes {echo_floor():.0f} µs per round trip")


if __name__ == "__main__":
    main()
