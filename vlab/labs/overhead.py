"""Lab 06 — overhead, measured properly: the same workloads natively, in a QEMU guest and on the toy VMM.

What is compared, honestly:

* **Natively vs a QEMU guest.** The guest image's ``/bin/busybox`` is Debian's static busybox, the
  very binary installed on the host, so each workload is *the same x86-64 program* run by the
  host's kernel or by the guest's kernel inside QEMU (:data:`WORKLOADS`: a shell arithmetic loop,
  a one-byte ``dd`` that is two system calls per byte, and 4 KiB block reads). Timing is done from
  the host in both cases, around a whole shell command: :func:`native_sample` spawns
  ``busybox sh -c``; :func:`guest_sample` runs the command over the serial console. Both include a
  fixed cost of the instrument (process spawn, the console round trip) that
  :func:`instrument_sample` measures, so a lab can show how big it is against the workload.
  The I/O workload reads a data file (:func:`data_disk`) with the same ``dd`` on both sides, both
  through their kernel's page cache (warmed by the warm-up run): like with like. (``O_DIRECT`` in the
  guest only would compare the virtio path with a page-cache hit; ``O_DIRECT`` on both sides would
  need QEMU to bypass the host page cache as well.) The workload is sized to take ≥ 10× the
  instrument natively; the lab subtracts each side's instrument.
* **The toy VMM** (:mod:`vlab.toyvmm`) cannot run x86 programs, and nothing runs RISC-V natively
  here; its baseline is Unicorn itself. Its value is the counters: instructions and exits per
  run, to which the cost model ``time = instructions × c_insn + exits × c_exit`` is fitted
  (see the toy-VMM section below).

Statistics come from :mod:`vlab.measure` (warm-up, repeats, median, bootstrap intervals, ratios).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlab import plots
from vlab.errors import VlabError
from vlab.labs.notebook import attempt
from vlab.measure import Sample, repeat

if TYPE_CHECKING:
    from vlab.qemu import VM

__all__ = [
    "ARTICLE_MODEL",
    "COST_PLAN",
    "EXIT_KINDS",
    "CostRun",
    "cost_program",
    "measure_cost_runs",
    "measure_side_by_side",
    "run_cost_workload",
    "DATA_MIB",
    "GUEST_DISK",
    "WORKLOADS",
    "Workload",
    "attempt",
    "busybox_version",
    "busybox_versions",
    "data_disk",
    "guest_sample",
    "host_busybox",
    "instrument_sample",
    "native_sample",
    "params_for",
    "show",
]

def params_for(seed: int) -> dict[str, object]:
    """The lab's parameters for a student's seed: the new workload to predict, the noise experiment."""
    rng = random.Random(seed)
    return {
        "new_work": rng.choice([12, 20, 32, 48, 96, 160]),
        "new_iterations": rng.choice([9000, 12000, 15000]),
        "noise_runs": rng.choice([20, 24, 28]),
        "bootstrap_seed": rng.randrange(1 << 30),
    }


#: size of the data file the I/O workload reads (all of it, in 4 KiB blocks)
DATA_MIB = 32
#: where the data disk appears in the guest (the first virtio disk)
GUEST_DISK = "/dev/vda"


@dataclass(frozen=True)
class Workload:
    """A shell command run by busybox on the host or in the guest.

    ``{disk}`` in :attr:`command` is replaced by the data file (host) or :data:`GUEST_DISK` (guest).
    """

    name: str
    command: str
    stresses: str

    def command_for(self, disk: str) -> str:
        """The command with the data file filled in."""
        return self.command.replace("{disk}", disk)


WORKLOADS: dict[str, Workload] = {
    "compute": Workload(
        "compute", "i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done",
        "user-mode instructions only: the shell interpreting arithmetic"),
    "syscall": Workload(
        "syscall", "dd if=/dev/zero of=/dev/null bs=1 count=20000 2>/dev/null",
        "two system calls per byte (read, write): kernel entries and exits"),
    "io": Workload(
        "io", "dd if={disk} of=/dev/null bs=4k count=8192 2>/dev/null",
        "4 KiB block reads of a cached disk: read system calls and page-cache copies on both sides"),
}


def host_busybox() -> str:
    """Path of the host's busybox (the same static binary as the guest's ``/bin/busybox``)."""
    path = shutil.which("busybox")
    if path is None:
        raise VlabError("busybox is not installed on the host", field="busybox", value=None,
                        fix="apt-get install busybox-static (the guest image is built from it too)")
    return path


def busybox_versions(vm: VM) -> tuple[str, str]:
    """The busybox build on the host and in the guest (to show both run the same program)."""
    host = subprocess.run([host_busybox()], capture_output=True, text=True, check=False).stdout
    return busybox_version(host), busybox_version(vm.console.run("busybox | head -1").output)


def busybox_version(output: str) -> str:
    """The version line of ``busybox`` output (to show host and guest run the same build)."""
    for line in output.splitlines():
        if line.startswith("BusyBox v"):
            return line.split(" multi-call")[0]
    return "unknown"


@contextlib.contextmanager
def data_disk(mib: int = DATA_MIB) -> Iterator[Path]:
    """A temporary raw disk image of random bytes (removed on exit), for the I/O workload.

    Random bytes, not zeros: a sparse file of zeros would let both sides skip the reads.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vlab-lab06-"))
    try:
        path = workdir / "data.img"
        with open(path, "wb") as image:
            for _ in range(mib):
                image.write(os.urandom(1 << 20))
        yield path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _host_command(workload: Workload, disk: Path | None) -> list[str]:
    command = workload.command_for(str(disk) if disk else "/dev/zero")
    return [host_busybox(), "sh", "-c", command]


def native_sample(workload: Workload, n: int = 7, warmup: int = 1, disk: Path | None = None) -> Sample:
    """Time ``busybox sh -c <workload>`` on the host, *n* times after *warmup* runs.

    :param disk: the data file for the I/O workload (:func:`data_disk`).
    """
    argv = _host_command(workload, disk)
    return repeat(lambda: _run_native(argv), n=n, warmup=warmup, label=f"{workload.name} native")


def _run_native(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _guest_command(workload: Workload) -> str:
    return workload.command_for(GUEST_DISK)


def _run_guest(vm: VM, workload: Workload) -> float:
    command = _guest_command(workload)
    result = vm.console.run(command, timeout=120)
    if not result.ok:
        raise VlabError(f"the {workload.name} workload failed in the guest", field="command", value=command,
                        fix="the I/O workload needs a data disk: VM(disks=(Disk(path),))",
                        detail=result.output[-300:])
    return result.seconds


def guest_sample(vm: VM, workload: Workload, n: int = 7, warmup: int = 1) -> Sample:
    """Time the workload in the guest over the serial console (host clock, whole command).

    The I/O workload reads :data:`GUEST_DISK` through the guest's page cache, as the host reads the data file
    through its own.
    """
    times = [_run_guest(vm, workload) for _ in range(warmup + n)][warmup:]
    return Sample(times, unit="s", label=f"{workload.name} {vm.accel.kind}")


def measure_side_by_side(vm: VM, disk: Path, n: int = 7, warmup: int = 1,
                         workloads: Sequence[Workload] = tuple(WORKLOADS.values())) -> dict[str, tuple[Sample, Sample]]:
    """Each workload natively and in the guest, interleaved run by run (native, guest, native, …).

    Interleaving spreads any slow spell of the host over both sides, so the *ratio* stays honest.

    :returns: workload name → (native sample, guest sample).
    """
    result = {}
    for workload in workloads:
        argv = _host_command(workload, disk)
        native, guest = [], []
        for i in range(warmup + n):
            start = time.perf_counter()
            _run_native(argv)
            elapsed = time.perf_counter() - start
            in_guest = _run_guest(vm, workload)
            if i >= warmup:
                native.append(elapsed)
                guest.append(in_guest)
        result[workload.name] = (Sample(native, label=f"{workload.name} native"),
                                 Sample(guest, label=f"{workload.name} {vm.accel.kind}"))
    return result


def instrument_sample(vm: VM | None = None, n: int = 7) -> Sample:
    """The cost of the instrument itself: an empty command (``:``) on the host, or in *vm* if given."""
    if vm is None:
        argv = [host_busybox(), "sh", "-c", ":"]
        return repeat(lambda: subprocess.run(argv, check=True), n=n, warmup=1, label="empty command native")
    times = [vm.console.run(":").seconds for _ in range(n + 1)][1:]
    return Sample(times, unit="s", label=f"empty command {vm.accel.kind}")


#: the reference article's performance "model" (§4.2.2 and §4.3.2), as printed
ARTICLE_MODEL = {
    "before": {"P (performance)": "300 MHz", "O (overhead)": "300 MHz"},
    "after": {"P (performance)": "200 MHz", "O (overhead)": "200 MHz"},
    "claimed": "performance improved by 100 MHz, overhead reduced by 100 MHz",
}


# ================================================================ the toy VMM: a cost model from counters

_COST_GUEST = """
main:
        li s1, MAILBOX
        li s2, {iterations}
1:      li t2, {work}
        beqz t2, 3f
2:      addi t2, t2, -1                 # plain work: 2 instructions per round, never traps
        bnez t2, 2b
3:      {exit_insns}
        ld t0, 0(s1)
        addi t0, t0, 1
        sd t0, 0(s1)
        addi s2, s2, -1
        bnez s2, 1b
        li a0, 0
        HYPERCALL HC_SHUTDOWN
"""

#: how each kind of exit is caused: a no-op hypercall, or a read of the UART's status register (MMIO)
EXIT_KINDS = {
    "hypercall": "HYPERCALL HC_NOP",
    "mmio": "li t3, UART\n        lbu t3, 5(t3)",
}


@dataclass(frozen=True)
class CostRun:
    """One run of a cost-model workload on the toy VMM: its counters and its wall time."""

    work: int
    iterations: int
    instructions: int
    exits: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        """Plain data (what a notebook exports to the grader)."""
        return {"work": self.work, "iterations": self.iterations, "instructions": self.instructions,
                "exits": self.exits, "seconds": self.seconds}


def cost_program(work: int, iterations: int, exit_kind: str = "hypercall") -> bytes:
    """A guest that runs ``iterations`` rounds of ``2 × work`` plain instructions and one exit, then shuts down."""
    if exit_kind not in EXIT_KINDS:
        raise VlabError("unknown kind of exit", field="exit_kind", value=exit_kind, fix=f"one of {list(EXIT_KINDS)}")
    if work < 0 or iterations < 1:
        raise VlabError("work must be ≥ 0 and iterations ≥ 1", field="work/iterations", value=(work, iterations))
    from vlab.toyvmm.programs import kernel_program

    source = _COST_GUEST.format(work=work, iterations=iterations, exit_insns=EXIT_KINDS[exit_kind])
    return kernel_program(source, name="cost.S")


def run_cost_workload(program: bytes, work: int = 0, iterations: int = 0) -> CostRun:
    """Boot ``program`` on a fresh toy VMM, run it to shutdown, and read the VMM's counters.

    ``instructions`` is the VMM's virtual time (instructions executed), ``exits`` the sum of its
    exit counters; ``seconds`` is the host's wall time of :meth:`Machine.run` alone (machine set-up
    excluded).
    """
    from vlab.toyvmm import Machine

    with Machine() as machine:
        guest = machine.add_guest(program, name="cost")
        start = time.perf_counter()
        machine.run()
        seconds = time.perf_counter() - start
        if guest.exit_code != 0:
            raise VlabError("the cost-model guest did not shut down cleanly", field="exit code",
                            value=guest.exit_code, detail=guest.uart.text[-300:])
        return CostRun(work, iterations, machine.now, sum(guest.exit_counts), seconds)


def measure_cost_runs(plan: Sequence[tuple[int, int]], repeats: int = 5,
                      exit_kind: str = "hypercall") -> list[CostRun]:
    """Run each ``(work, iterations)`` of ``plan`` ``repeats`` times and keep, per workload, the run
    with the median time.

    The runs are *interleaved* (round 1: every workload once, round 2: every workload again, …) after
    one warm-up run, so that a slow spell of the host (another job starting) hits every workload
    alike instead of one of them.
    """
    programs = [(work, iterations, cost_program(work, iterations, exit_kind)) for work, iterations in plan]
    if programs:
        run_cost_workload(programs[0][2])  # warm-up: imports, Unicorn's first translation
    rounds = [[run_cost_workload(program, work, iterations) for work, iterations, program in programs]
              for _ in range(repeats)]
    kept = []
    for runs in zip(*rounds, strict=True):
        ordered = sorted(runs, key=lambda r: r.seconds)
        kept.append(ordered[len(ordered) // 2])
    return kept


#: the workloads the cost model is fitted to: (plain-work rounds per exit, iterations)
COST_PLAN = ((0, 24000), (4, 24000), (16, 15000), (64, 9000), (256, 4500), (2048, 750))


# ================================================================ display


#: Display a plotly figure (in a notebook) or its text summary (elsewhere): :func:`vlab.plots.show`.
show = plots.show


