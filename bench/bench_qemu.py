"""Benchmarks for vlab.qemu: boot, QMP round trip, console round trip, live migration (medians).

Run: ``.venv/bin/python bench/bench_qemu.py [--quick]``

Every ratio is against a baseline measured in the same run, on the same QEMU:
the QMP round trip of ``vm.qmp("query-status")`` (vlab's sync API, through its
background loop thread) is compared with the raw ``qemu.qmp`` async client, its
legacy sync wrapper and a raw socket, each on its own extra QMP monitor of the
same VM. The numbers measured before the project (machine-facts.md) are printed
alongside for reference only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from qemu.qmp import QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from vlab.errors import VlabError
from vlab.host.accel import detect_accelerator
from vlab.qemu import VM, VMConfig

# Reference figures from /work/shared/reference/machine-facts.md (measured before the project, same machine).
FACTS_BOOT_TCG_PC_S = 2.26  # "cloud + 14 virtio/acpi modules + balloon", -M pc, launch -> ready marker
FACTS_QMP_RAW_SOCKET_MS = 0.22  # query-status, median of 1000
FACTS_QMP_ASYNC_CLIENT_MS = 0.40
FACTS_QMP_LEGACY_SYNC_MS = 0.47
FACTS_MIGRATION_UNIX_TOTAL_S = 0.68  # unix socket, 128 MiB/s, 256 MiB busybox guest
FACTS_MIGRATION_UNIX_DOWNTIME_MS = 21
#: the issue's target: vlab's sync QMP call within 1.2x the raw async client
TARGET_SYNC_OVER_ASYNC = 1.2


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(function: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def bench_boot(config: VMConfig, repeats: int) -> list[float]:
    boots = []
    for _ in range(repeats):
        vm = VM(config)
        vm.start()
        assert vm.boot_seconds is not None
        boots.append(vm.boot_seconds)
        vm.stop(graceful=False)
    return boots


class RawClients:
    """The baselines, each connected to its own extra QMP monitor of the same VM."""

    def __init__(self, sockets: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = QMPClient("bench")
        self.loop.run_until_complete(self.client.connect(sockets["async"]))
        self.legacy = QEMUMonitorProtocol(sockets["legacy"])
        self.legacy.connect()
        self.raw = socket.socket(socket.AF_UNIX)
        self.raw.connect(sockets["raw"])
        self.stream = self.raw.makefile("rwb")
        self.stream.readline()  # greeting
        self.raw_round_trip("qmp_capabilities")

    def raw_round_trip(self, command: str = "query-status") -> None:
        self.stream.write(json.dumps({"execute": command}).encode() + b"\n")
        self.stream.flush()
        json.loads(self.stream.readline())

    def async_samples(self, repeats: int) -> list[float]:
        async def run() -> list[float]:
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                await self.client.execute("query-status")
                samples.append(time.perf_counter() - started)
            return samples

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.disconnect())
        self.loop.close()
        self.legacy.close()
        self.raw.close()


def bench_qmp(config: VMConfig, repeats: int, rounds: int = 10) -> dict[str, list[float]]:
    """Round trips of query-status, the methods interleaved in rounds so load drift hits all of them alike."""
    with tempfile.TemporaryDirectory(prefix="vlabq") as tmp:
        sockets = {name: f"{tmp}/{name}.sock" for name in ("async", "legacy", "raw")}
        extra: list[str] = []
        for path in sockets.values():
            extra += ["-qmp", f"unix:{path},server=on,wait=off"]
        with VM(config.replace(extra_args=tuple(extra))) as vm:
            vm.pause()  # no guest activity competing with the measurement
            raw = RawClients(sockets)

            async def vlab_async(count: int) -> list[float]:
                samples = []
                for _ in range(count):
                    started = time.perf_counter()
                    await vm.aqmp("query-status")
                    samples.append(time.perf_counter() - started)
                return samples

            user_loop = asyncio.new_event_loop()  # stands for Jupyter's loop
            methods: dict[str, Callable[[int], list[float]]] = {
                "vlab VM.qmp (sync)": lambda n: timed(lambda: vm.qmp("query-status"), n),
                "vlab VM.aqmp (async)": lambda n: user_loop.run_until_complete(vlab_async(n)),
                "qemu.qmp async client": raw.async_samples,
                "qemu.qmp legacy sync": lambda n: timed(lambda: raw.legacy.cmd("query-status"), n),
                "raw socket": lambda n: timed(raw.raw_round_trip, n),
            }
            results: dict[str, list[float]] = {name: [] for name in methods}
            for method in methods.values():
                method(50)  # warm-up
            per_round = max(1, repeats // rounds)
            for _ in range(rounds):
                for name, method in methods.items():
                    results[name] += method(per_round)
            user_loop.close()
            raw.close()
    return results


def bench_console(config: VMConfig, repeats: int) -> list[float]:
    with VM(config) as vm:
        for _ in range(5):
            vm.console.run("true")
        return timed(lambda: vm.console.run("true"), repeats)


def bench_migration(config: VMConfig, repeats: int) -> list[tuple[float, float, float]]:
    """(total s, downtime ms, wall s) per migration of an idle guest over a unix socket at defaults."""
    results = []
    for _ in range(repeats):
        source = VM(config).start()
        destination = VM(config)
        try:
            result = source.migrate_to(destination)
            results.append((result.total_time_ms / 1000, float(result.downtime_ms), result.wall_seconds))
        finally:
            source.kill()
            destination.kill()
    return results


def bench_dirty_migration(config: VMConfig, repeats: int, workload: str) -> tuple[list[float], list[float], int]:
    """Migrations while ``workload`` dirties guest memory: (total s, downtime ms, destinations still healthy)."""
    totals, downtimes, healthy = [], [], 0
    for _ in range(repeats):
        source = VM(config).start()
        destination = VM(config)
        try:
            source.console.run(f"{workload} > /dev/null &")
            time.sleep(1.0)
            result = source.migrate_to(destination)
            totals.append(result.total_time_ms / 1000)
            downtimes.append(float(result.downtime_ms))
            time.sleep(1.0)  # a corrupted guest kernel panics within a second or so of arriving
            with contextlib.suppress(VlabError):  # the console closed: the guest panicked and QEMU exited
                healthy += destination.console.run("true", timeout=5).ok
        finally:
            source.kill()
            destination.kill()
    return totals, downtimes, healthy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    options = parser.parse_args()
    boots, qmp_n, console_n, migrations = (3, 300, 20, 3) if options.quick else (7, 1000, 100, 5)
    tcg = VMConfig(accel="tcg")

    boot = bench_boot(tcg, boots)
    print(f"boot to ready, TCG, -M pc   median {statistics.median(boot):.2f} s  (n={boots}, "
          f"min {min(boot):.2f}, max {max(boot):.2f}); machine-facts: {FACTS_BOOT_TCG_PC_S} s, "
          f"ratio {statistics.median(boot) / FACTS_BOOT_TCG_PC_S:.2f}x")
    q35 = bench_boot(VMConfig(accel="tcg", machine="q35"), max(3, boots // 2))
    print(f"boot to ready, TCG, -M q35  median {statistics.median(q35):.2f} s; q35/pc "
          f"{statistics.median(q35) / statistics.median(boot):.2f}x")
    info = detect_accelerator()
    if info.usable_kvm:
        kvm = bench_boot(VMConfig(accel="kvm"), boots)
        print(f"boot to ready, KVM          median {statistics.median(kvm):.2f} s; "
              f"KVM/TCG {statistics.median(kvm) / statistics.median(boot):.2f}x")
    else:
        print(f"boot to ready, KVM          not measured: {info.reason}")

    qmp = bench_qmp(tcg, qmp_n)
    async_ms = median_ms(qmp["qemu.qmp async client"])
    print(f"\nQMP query-status round trip, median of {qmp_n} (same VM, same run):")
    for name, samples in qmp.items():
        print(f"  {name:28s} {median_ms(samples):6.3f} ms   {median_ms(samples) / async_ms:5.2f}x async client")
    sync_ratio = median_ms(qmp["vlab VM.qmp (sync)"]) / async_ms
    verdict = "meets" if sync_ratio <= TARGET_SYNC_OVER_ASYNC else "MISSES"
    print(f"  vlab sync / async client = {sync_ratio:.2f}x: {verdict} the target <= {TARGET_SYNC_OVER_ASYNC}x")
    print(f"  machine-facts: raw socket {FACTS_QMP_RAW_SOCKET_MS} ms, async {FACTS_QMP_ASYNC_CLIENT_MS} ms, "
          f"legacy sync {FACTS_QMP_LEGACY_SYNC_MS} ms")

    console = bench_console(tcg, console_n)
    print(f"\nconsole run('true') round trip median {median_ms(console):.2f} ms (n={console_n}, "
          f"min {min(console) * 1000:.2f}, max {max(console) * 1000:.2f})")

    moves = bench_migration(tcg, migrations)
    total = statistics.median(m[0] for m in moves)
    downtime = statistics.median(m[1] for m in moves)
    wall = statistics.median(m[2] for m in moves)
    print(f"\nlive migration, idle 256 MiB guest, unix socket, 128 MiB/s (n={migrations}): "
          f"total {total:.2f} s, downtime {downtime:.0f} ms, migrate_to() wall {wall:.2f} s")
    print(f"  machine-facts: total {FACTS_MIGRATION_UNIX_TOTAL_S} s, downtime {FACTS_MIGRATION_UNIX_DOWNTIME_MS} ms; "
          f"ratio total {total / FACTS_MIGRATION_UNIX_TOTAL_S:.2f}x")
    for workload in ("memdirty 16 1000", "memdirty 64 20000"):
        totals, downtimes, healthy = bench_dirty_migration(tcg, migrations, workload)
        print(f"live migration while `{workload}` runs (n={migrations}): total {statistics.median(totals):.2f} s, "
              f"downtime {statistics.median(downtimes):.0f} ms; destination guest alive after: {healthy}/{migrations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
