"""Lab 08's claim, measured: a container next to a VM — start time and memory, as ratios in the same run.

The container runtime is the reference solution of q1 in ``labs/source/08-containers.ipynb`` (executed from the
notebook: one copy of it). Baselines, measured in this run: a plain process (``true`` forked and exec'd through the
same ``lab.spawn``) for the start, and the container for the VM's ratios. Needs namespaces (root, or user
namespaces) and QEMU; prints, never asserts.

    python bench/bench_containers.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from vlab.labs import containers as lab

SOURCE = Path(__file__).resolve().parents[1] / "labs" / "source" / "08-containers.ipynb"
#: Targets (printed, not asserted): what the lab's text claims a student will see on 2 cores with TCG.
TARGET_VM_START_RATIO = 10.0  # a VM's boot ≥ 10 × a container's start
TARGET_VM_MEMORY_RATIO = 10.0  # a VM's PSS ≥ 10 × an idle container's


def reference_runtime() -> Any:
    for cell in json.loads(SOURCE.read_text())["cells"]:
        text = "".join(cell["source"])
        if text.startswith("# vlab: solution q1\n"):
            namespace: dict[str, Any] = {}
            exec("from vlab.labs import containers as lab\n" + text, namespace)
            return namespace["run_container"]
    raise SystemExit(f"no q1 solution in {SOURCE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    host = lab.support()
    if not host.namespaces:
        raise SystemExit(f"skipped: {host.why}")
    run = reference_runtime()
    box = Path(tempfile.mkdtemp(prefix="vlab-bench-l8-"))
    try:
        rootfs = lab.build_rootfs(box / "rootfs")
        process = lab.start_seconds(lambda *_: lab.spawn(lambda: os.execvp("true", ["true"])), None, args.repeat)
        container = lab.start_seconds(run, rootfs, args.repeat)
        footprint = sum(lab.idle_footprint_kib(run, rootfs))
        vm = lab.boot_vm()
    finally:
        lab.sweep(workspaces=True)
        lab._remove_tree(box)
    process_ms, container_ms = statistics.median(process) * 1000, statistics.median(container) * 1000
    vm_ms = vm.boot_seconds * 1000
    print(f"{host.why}")
    print(f"start: plain process {process_ms:.1f} ms, container {container_ms:.1f} ms "
          f"(median of {args.repeat}), VM boot to shell {vm_ms:.0f} ms")
    print(f"memory (PSS): idle container {footprint} KiB, VM's QEMU {vm.pss_kib} KiB")
    print(f"ratios: container/process start {container_ms / process_ms:.1f}x; VM/container start "
          f"{vm_ms / container_ms:.0f}x (target >= {TARGET_VM_START_RATIO:g}x); VM/container memory "
          f"{vm.pss_kib / footprint:.0f}x (target >= {TARGET_VM_MEMORY_RATIO:g}x)")


if __name__ == "__main__":
    main()
