"""Fast start: a VM restored from a snapshot template vs today's full boot, measured in one run.

Run: ``.venv/bin/python bench/bench_fast_start.py [--rounds N] [--idle N] [--grader | --cold-only]``

* **start → first console command**: ``VM(config).start()`` then ``vm.console.run("true")``, from before the
  ``VM`` is made until the command's answer is back. Cold boots (``start(cold=True)``, what every start was
  before templates) and default starts are interleaved, round by round, so host load hits both alike; the
  ratio of the medians is the figure. Done for the default guest (with a balloon: the *copy* form, whose
  state carries the RAM) and for a guest without a balloon (the *shared-RAM* form, whose RAM is a file every
  restored VM maps copy-on-write).
* **memory of N idle VMs**: N cold-booted VMs, then N restored ones, each set running at once; the sum of
  QEMU's RSS and of its PSS (proportional set size: a page shared by k processes counts 1/k in each), read
  from ``/proc/<pid>/smaps_rollup``. RSS counts shared template pages in every VM; PSS is the honest figure
  for memory saved.

* **cold boot → first console command**, stock kernel: ``VMConfig()`` (``machine="auto"``: ``-M microvm``, the
  kernel's PVH entry when the image has ``vmlinux``, the trimmed init) vs ``VMConfig(machine="pc")`` (today's
  full boot of the same image), both ``start(cold=True)``, interleaved; ratio of the medians. Target ≤ 0.85×.
  ``--cold-only`` runs just this (and the next one).
* **cold boot → first console command**, minimal kernel (``vlab images build --kernel minimal``, when built):
  ``VMConfig(kernel=minimal_kernel(), initrd=minimal_initrd())`` (``-M microvm``, its PVH entry) vs
  ``VMConfig(machine="pc")`` (today's full boot of the default image), interleaved in one run, ratio of the
  medians. Target ≤ 0.4×. ``--minimal-only`` runs just this.

Templates are built (once) before anything is timed. Targets (issue 19, printed, never asserted): default
start ≤ 0.15× of the full boot, goal ≈ 0.05× with the shared-RAM form.

``--grader`` (root): the same interleaved comparison *inside the grader's jail*, where a graded notebook's VMs
run: a throw-away uid in new namespaces and the allow-list root (root's template cache bound read-only), in a
cgroup with lab 01's limits. There a cold boot is what every VM did before root's templates were trusted; the
copy form restores from root's stream, and the shared form from a private copy of root's RAM file (the copy's
own time is reported too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.images import minimal_initrd, minimal_kernel
from vlab.paths import images_dir
from vlab.qemu import VM, VMConfig, template

TARGET_DEFAULT = 0.15
GOAL_SHARED = 0.05
TARGET_COLD = 0.85
TARGET_MINIMAL = 0.4


def start_to_first_command(config: VMConfig, cold: bool) -> tuple[float, str]:
    started = time.perf_counter()
    vm = VM(config)
    vm.start(cold=cold)
    try:
        vm.console.run("true")
        return time.perf_counter() - started, vm.start_mode or "?"
    finally:
        vm.kill()


def smaps_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[name.strip()] = int(rest.split()[0])
    return values


def idle_memory(config: VMConfig, count: int, cold: bool) -> tuple[int, int]:
    """Sum of RSS and of PSS (KiB) of ``count`` idle VMs of ``config`` running at once."""
    vms = [VM(config.replace(name=f"idle{i}")) for i in range(count)]
    try:
        for vm in vms:
            vm.start(cold=cold)
        time.sleep(2.0)  # idle: let the guests settle
        rss = pss = 0
        for vm in vms:
            assert vm.pid is not None
            values = smaps_kib(vm.pid)
            rss, pss = rss + values["Rss"], pss + values["Pss"]
        return rss, pss
    finally:
        for vm in vms:
            vm.kill()


_IN_JAIL = """
import json, sys, tempfile, time
from pathlib import Path
from vlab.qemu import VM, VMConfig, template
configs = {"copy": VMConfig(accel="tcg"), "shared": VMConfig(accel="tcg", balloon=False)}
times = {f"{form} {how}": [] for form in configs for how in ("cold", "default")}
modes, copies = set(), []
for _ in range(int(sys.argv[1])):
    for form, config in configs.items():
        for how, cold in (("cold", True), ("default", False)):
            started = time.perf_counter()
            vm = VM(config)
            vm.start(cold=cold)
            try:
                vm.console.run("true")
                times[f"{form} {how}"].append(time.perf_counter() - started)
                modes.add(f"{form} {how}: {vm.start_mode} {vm.start_note}".strip())
            finally:
                vm.kill()
    found = template.find(configs["shared"], "tcg")
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        template.private_ram(found, Path(work))
        copies.append(time.perf_counter() - started)
print(json.dumps({"times": times, "modes": sorted(modes), "copy": copies}))
"""


def in_grader_jail(rounds: int) -> dict[str, Any]:
    """Run :data:`_IN_JAIL` as a graded notebook's code runs: the grader's jail, throw-away uid, lab 01's cgroup."""
    from vlab.grading.jail import Cgroup, JailSpec, sweep
    from vlab.grading.mounts import student_readonly
    from vlab.grading.sandbox import _make_private_dirs, _throwaway_uid

    uid = _throwaway_uid()
    base, work_fd, conn_fd = _make_private_dirs(uid)
    cgroup = Cgroup.create(f"vlab-bench-{os.getpid()}", memory_mb=3072, processes=256, cpu_percent=100)
    try:
        spec = JailSpec(mode="root", uid=uid, address_space_mb=16384, cpu_seconds=3600, file_mb=4096,
                        processes=256, cgroup_procs=cgroup.procs_files if cgroup else (), workdir=str(base / "work"),
                        readonly=student_readonly(), stage=str(base / "root"))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base / "work"), "TMPDIR": "/tmp",
               "VLAB_IMAGES": str(images_dir()), template.TEMPLATES_ENV: str(template.templates_dir())}
        done = subprocess.run(spec.command([sys.executable, "-c", _IN_JAIL, str(rounds)]), capture_output=True,
                              text=True, env=env, cwd="/", timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result
    finally:
        sweep(cgroup)
        if cgroup is not None:
            cgroup.remove()
        os.close(work_fd)
        os.close(conn_fd)
        shutil.rmtree(base, ignore_errors=True)


def grader(rounds: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("--grader needs root (the throw-away uid, namespaces and cgroup of the grader)")
    print(f"inside the grader's jail (throw-away uid, lab 01's cgroup), start -> first console command, "
          f"{rounds} interleaved rounds (medians)")
    seen = in_grader_jail(rounds)
    for line in seen["modes"]:
        print(f"  seen: {line}")
    times = seen["times"]
    for form in ("copy", "shared"):
        cold, warm = statistics.median(times[f"{form} cold"]), statistics.median(times[f"{form} default"])
        print(f"  {form} form: cold boot {cold:.3f} s, default start {warm:.3f} s -> {warm / cold:.3f}x")
    print(f"  of which copying the shared form's RAM file: {statistics.median(seen['copy']):.3f} s")


def cold_boots(rounds: int) -> float:
    """microvm (``machine="auto"``) vs ``pc`` cold boots of the stock kernel, interleaved; returns the ratio."""
    configs = {"pc": VMConfig(accel="tcg", machine="pc"), "auto": VMConfig(accel="tcg")}
    times: dict[str, list[float]] = {label: [] for label in configs}
    machines = {label: VM(config).machine for label, config in configs.items()}
    print(f"\ncold boot -> first console command, stock kernel, {rounds} interleaved rounds (medians)")
    for _ in range(rounds):
        for label, config in configs.items():
            times[label].append(start_to_first_command(config, cold=True)[0])
    pc, auto = statistics.median(times["pc"]), statistics.median(times["auto"])
    kernel = VMConfig(accel="tcg").replace(machine=machines["auto"]).boot_kernel().name
    print(f"  -M pc (today's full boot): {pc:.3f} s; machine=auto ({machines['auto']}, {kernel}): {auto:.3f} s "
          f"-> {auto / pc:.3f}x (target <= {TARGET_COLD}x: {'met' if auto / pc <= TARGET_COLD else 'NOT met'})")
    print(f"  spread: pc {min(times['pc']):.2f}-{max(times['pc']):.2f} s, "
          f"auto {min(times['auto']):.2f}-{max(times['auto']):.2f} s")
    return auto / pc


def minimal_boots(rounds: int) -> float | None:
    """The minimal kernel on microvm vs the default image on ``-M pc``, interleaved; the ratio (None: not built)."""
    try:
        kernel, initrd = minimal_kernel(), minimal_initrd()
    except VlabError as exc:
        print(f"\nminimal kernel: not measured ({exc.problem}; {exc.fix})")
        return None
    configs = {"pc": VMConfig(accel="tcg", machine="pc"),
               "minimal": VMConfig(accel="tcg", kernel=kernel, initrd=initrd)}
    machine, booted = configs["minimal"].boot_machine(), configs["minimal"].boot_kernel().name
    times: dict[str, list[float]] = {label: [] for label in configs}
    print(f"\ncold boot -> first console command, minimal kernel ({machine}, {booted}) vs the default image on "
          f"-M pc, {rounds} interleaved rounds (medians)")
    for _ in range(rounds):
        for label, config in configs.items():
            times[label].append(start_to_first_command(config, cold=True)[0])
    pc, small = statistics.median(times["pc"]), statistics.median(times["minimal"])
    print(f"  -M pc, stock kernel (today's full boot): {pc:.3f} s; minimal kernel: {small:.3f} s -> {small / pc:.3f}x "
          f"(target <= {TARGET_MINIMAL}x: {'met' if small / pc <= TARGET_MINIMAL else 'NOT met'})")
    print(f"  spread: pc {min(times['pc']):.2f}-{max(times['pc']):.2f} s, "
          f"minimal {min(times['minimal']):.2f}-{max(times['minimal']):.2f} s")
    return small / pc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved cold/default pairs per guest (default 8)")
    parser.add_argument("--idle", type=int, default=8, help="VMs in the memory comparison (default 8)")
    parser.add_argument("--grader", action="store_true", help="measure inside the grader's jail instead (root)")
    parser.add_argument("--cold-only", action="store_true", help="only the microvm vs pc cold-boot comparisons")
    parser.add_argument("--minimal-only", action="store_true",
                        help="only the minimal kernel (microvm) vs the default image (pc) cold-boot comparison")
    args = parser.parse_args()
    if args.minimal_only:
        minimal_boots(args.rounds)
        return
    if args.cold_only:
        cold_boots(args.rounds)
        minimal_boots(args.rounds)
        return

    configs = {"default guest (balloon: copy form)": VMConfig(accel="tcg"),
               "no balloon (shared-RAM form)": VMConfig(accel="tcg", balloon=False)}
    for config in configs.values():
        found, note = template.ensure(config, "tcg")
        print(f"template {found.key} ({'shared RAM' if found.shared else 'copy'}): {note or 'cached'}; "
              f"state {found.state_path.stat().st_size / 2**20:.1f} MiB")
    if args.grader:
        grader(args.rounds)
        return

    print(f"\nstart -> first console command, {args.rounds} interleaved rounds (medians)")
    ratios = {}
    for label, config in configs.items():
        cold, warm, modes = [], [], set()
        for _ in range(args.rounds):
            cold.append(start_to_first_command(config, cold=True)[0])
            seconds, mode = start_to_first_command(config, cold=False)
            warm.append(seconds)
            modes.add(mode)
        ratio = statistics.median(warm) / statistics.median(cold)
        ratios[label] = ratio
        print(f"  {label}: full boot {statistics.median(cold):.3f} s, default start {statistics.median(warm):.3f} s "
              f"({'/'.join(sorted(modes))}) -> {ratio:.3f}x")
    cold_boots(args.rounds)
    minimal_boots(args.rounds)
    first = next(iter(ratios.values()))
    print(f"  target: default start <= {TARGET_DEFAULT}x: {'met' if first <= TARGET_DEFAULT else 'NOT met'} "
          f"({first:.3f}x); shared-RAM goal ~{GOAL_SHARED}x: {list(ratios.values())[1]:.3f}x")

    print(f"\nmemory of {args.idle} idle VMs (sum over QEMU processes)")
    for label, config in configs.items():
        cold_rss, cold_pss = idle_memory(config, args.idle, cold=True)
        warm_rss, warm_pss = idle_memory(config, args.idle, cold=False)
        print(f"  {label}: cold RSS {cold_rss / 1024:.0f} MiB, PSS {cold_pss / 1024:.0f} MiB; "
              f"restored RSS {warm_rss / 1024:.0f} MiB, PSS {warm_pss / 1024:.0f} MiB; "
              f"saved {(cold_pss - warm_pss) / 1024:.0f} MiB PSS ({warm_pss / cold_pss:.2f}x)")


if __name__ == "__main__":
    main()
