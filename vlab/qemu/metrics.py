"""What the host sees of a guest: per-vCPU host CPU time and QEMU's resident memory.

Each vCPU is a host thread of the QEMU process (its id comes from QMP
``query-cpus-fast``); the kernel accounts its CPU time in
``/proc/<pid>/task/<tid>/stat`` (utime + stime, in clock ticks). QEMU's RSS
(``VmRSS`` in ``/proc/<pid>/status``) is what guest memory really costs the host,
e.g. before and after ballooning.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from vlab.errors import VlabError
from vlab.host import procfs

__all__ = ["thread_cpu_seconds", "process_rss_bytes", "HostSample", "sample"]

def thread_cpu_seconds(pid: int, tid: int) -> float:
    """Host CPU time (user + system, seconds) of thread ``tid`` of process ``pid``."""
    stat = procfs.read_stat(pid, tid)
    if stat is None:
        raise VlabError("no such thread: the VM stopped or the thread id is stale", field="tid",
                        value=tid, fix="read vm.vcpus() again while the VM runs")
    return stat.cpu_seconds


def process_rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    rss = procfs.rss_bytes(pid)
    if rss is None:
        raise VlabError("no such process: the VM is not running", field="pid", value=pid, fix="vm.start() first")
    return rss


@dataclass(frozen=True)
class HostSample:
    """One host-side sample of a VM: when, QEMU's RSS, and CPU seconds per vCPU index."""

    time: float
    rss_bytes: int
    vcpu_seconds: Mapping[int, float]


def sample(pid: int, vcpu_threads: Mapping[int, int]) -> HostSample:
    """Sample RSS and per-vCPU CPU time; ``vcpu_threads`` maps vCPU index → host thread id."""
    seconds = {index: thread_cpu_seconds(pid, tid) for index, tid in vcpu_threads.items()}
    return HostSample(time.monotonic(), process_rss_bytes(pid), seconds)
