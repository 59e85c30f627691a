"""Lab 01 — create a virtual machine: the five steps, and what each one really does.

The notebook ``labs/source/01-create-vm.ipynb`` walks through the steps textbooks list for creating a
VM, each done for real on this host:

1. **Detect the host** (:func:`host_resources`): CPUs, memory, and the accelerator's *real* kind from
   :func:`vlab.host.detect_accelerator` (a ``/dev/kvm`` may hide a software hypervisor).
2. **Write a configuration** (:func:`classic_conf`): the textbook ``vm.conf`` (``kernel``, ``initrd``,
   ``appended``, ``root``, ``mem``, ``vcpus``) pointing at the built guest images.
3. **Turn it into a command line**: the student writes ``conf_to_argv``; :func:`essential_flags`
   extracts the graded flags (:data:`GRADED_FLAGS`) from any argv so that theirs can be compared with
   :meth:`vlab.qemu.VMConfig.qemu_argv`, and :func:`explain_argv` explains a command flag by flag.
4. **Boot and use it**: :func:`lab_configs` builds the lab's two VMs (user-mode NAT, plus a private
   bridge where the host allows it), :func:`boot_together` boots them in parallel and never leaves one
   behind, :func:`free_total_mib` / :func:`ping` read the guest's answers.
5. **Inspect and control it over QMP**: :func:`vcpu_table`, :func:`observe_pause` (guest time stops
   while the host's goes on), :func:`vm_panel` (the :class:`vlab.dashboards.VMPanel`, through the
   :class:`vlab.dashboards.VMPanel`) and a text fallback.

The graded answers are not here: the reference solutions live in the source notebook.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.labs.notebook import attempt
from vlab.qemu import VM, Nic, VMConfig
from vlab.qemu.metrics import thread_cpu_seconds
from vlab.qemu.network import PingResult, bridge_supported, ping

__all__ = [
    "FLAG_MEANINGS",
    "GRADED_FLAGS",
    "HostResources",
    "PauseObservation",
    "PingResult",
    "attempt",
    "boot_together",
    "classic_conf",
    "compare_argv",
    "essential_flags",
    "explain_argv",
    "free_total_mib",
    "guest_uptime",
    "host_resources",
    "lab_configs",
    "median_or_none",
    "observe_pause",
    "ping",
    "vcpu_table",
    "vm_panel",
]

#: The flags ``conf_to_argv`` is graded on, in this order. Each is compared by *value* after
#: :func:`essential_flags` normalises it: ``-m`` as a whole number of MiB, ``-smp`` as a count, ``-kernel`` and
#: ``-initrd`` as resolved paths, ``-append`` as the *set* of kernel command-line words minus vlab's own
#: ``vlab.*`` words. Everything else (``-accel``, ``-M``, console and QMP plumbing, devices) is not graded.
GRADED_FLAGS = ("-kernel", "-initrd", "-append", "-m", "-smp")

#: What each flag of the textbook ``kvm -kernel … -initrd … -m 512 -nographic`` (and vlab's argv) means.
FLAG_MEANINGS = {
    "kvm": "Debian's wrapper for qemu-system-x86_64 -accel kvm: the emulator, asking for hardware KVM",
    "qemu-system-x86_64": "the emulator/VMM: a normal host process; each vCPU is one of its threads",
    "-name": "a name for the VM (shown by QEMU, used by vlab for MAC addresses)",
    "-M": "the machine model: pc = i440FX chipset with PCI and ACPI",
    "-accel": "how guest code runs: kvm = directly on the CPU (hardware VT-x/AMD-V); tcg = translated by QEMU",
    "-cpu": "the CPU model the guest sees",
    "-m": "guest RAM in MiB (the guest's free -m shows less: the kernel keeps some for itself)",
    "-smp": "number of virtual CPUs",
    "-kernel": "a Linux kernel QEMU loads directly, no bootloader and no disk needed (direct kernel boot)",
    "-initrd": "the initial RAM disk (here a busybox initramfs) the kernel unpacks as its first root "
               "file system; NOT a bootloader",
    "-append": "the kernel command line (console=ttyS0 sends the console to the first serial port)",
    "-nographic": "no window: serial port and QEMU monitor multiplexed on the terminal",
    "-nodefaults": "no default devices (no VGA, no default NIC): only what is listed",
    "-no-user-config": "ignore QEMU config files on the host",
    "-no-reboot": "exit instead of rebooting (a guest panic ends QEMU)",
    "-display": "no graphical display",
    "-serial": "where the guest's ttyS0 goes (mon:stdio = the terminal, with the monitor)",
    "-chardev": "a host-side channel (here a socket vlab holds) for QMP or the console",
    "-mon": "attach the QMP control protocol to a chardev",
    "-device": "add a device, e.g. virtio-balloon-pci or virtio-net-pci",
    "-netdev": "a host-side network backend: user = QEMU's built-in NAT, tap = a host tap interface",
    "-drive": "a disk image; if=virtio appears in the guest as /dev/vda (not /dev/sda)",
    "-blockdev": "a disk image as a block node (JSON), attached to a -device virtio-blk-pci (/dev/vda)",
    "-object": "a backend object (JSON), e.g. memory-backend-ram ram0 holding guest RAM, or a LUKS secret",
    "-incoming": "wait for a migration stream instead of booting",
}

_FLAGS_WITH_VALUE = frozenset(FLAG_MEANINGS) - {"kvm", "qemu-system-x86_64", "-nographic", "-nodefaults",
                                                 "-no-user-config", "-no-reboot"}


# ---------------------------------------------------------------- step 1: the host


@dataclass(frozen=True)
class HostResources:
    """What the host offers a VM.

    :ivar cpus: CPUs this process may run on (the most vCPUs worth giving one VM).
    :ivar mem_total_mib: physical memory.
    :ivar mem_available_mib: memory available without swapping (``MemAvailable``).
    :ivar accel_kind: ``hardware-kvm``, ``software-kvm`` (a software hypervisor behind ``/dev/kvm``) or ``none``.
    :ivar accel: what QEMU gets: ``kvm`` or ``tcg``.
    :ivar accel_reason: why.
    """

    cpus: int
    mem_total_mib: int
    mem_available_mib: int
    accel_kind: str
    accel: str
    accel_reason: str

    def table(self) -> str:
        """A small text table of the above."""
        rows = [("CPUs", str(self.cpus)), ("memory total", f"{self.mem_total_mib} MiB"),
                ("memory available", f"{self.mem_available_mib} MiB"), ("/dev/kvm is", self.accel_kind),
                ("accelerator used", self.accel), ("why", self.accel_reason)]
        return "\n".join(f"{name:<18} {value}" for name, value in rows)


def _meminfo_mib(key: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    raise VlabError(f"/proc/meminfo has no {key}", field="meminfo", value=key, fix="run on Linux")


def host_resources() -> HostResources:
    """Probe the host: CPUs, memory and the accelerator verdict of :func:`vlab.host.detect_accelerator`."""
    from vlab.host import detect_accelerator

    info = detect_accelerator()
    return HostResources(len(os.sched_getaffinity(0)), _meminfo_mib("MemTotal"), _meminfo_mib("MemAvailable"),
                         info.kind.value, info.accel, info.reason)


# ---------------------------------------------------------------- step 2: vm.conf


def classic_conf(kernel: Path | str, initrd: Path | str, *, mem: str = "256M", vcpus: int = 1,
                 root: str | None = "/dev/sda1", appended: str = "console=ttyS0") -> str:
    """The textbook ``vm.conf``, pointing at real files.

    ``root`` defaults to the textbook's ``/dev/sda1``: the lab shows why it does not matter here (the
    initramfs *is* the root file system) and what it would have to be with a virtio disk (``/dev/vda1``).
    """
    lines = [f'kernel = "{kernel}"', f'initrd = "{initrd}"', f'appended = "{appended}"']
    if root is not None:
        lines.append(f'root = "{root}"')
    lines += [f'mem = "{mem}"', f'vcpus = "{vcpus}"']
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- step 3: argv


def essential_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The graded flags of a QEMU command line, normalised for comparison (see :data:`GRADED_FLAGS`).

    A flag that is missing maps to None; a flag given twice keeps its last value (as QEMU does).

    :raises VlabError: if ``argv`` is not a list of strings, or a graded flag has no value after it.
    """
    if isinstance(argv, str) or not all(isinstance(word, str) for word in argv):
        raise VlabError("an argv is a list of strings, one per word", field="argv", value=argv,
                        fix='e.g. ["qemu-system-x86_64", "-m", "512", ...] (use shlex.split for a string)')
    found: dict[str, Any] = dict.fromkeys(GRADED_FLAGS)
    words = list(argv)
    for index, word in enumerate(words):
        if word not in GRADED_FLAGS:
            continue
        if index + 1 >= len(words):
            raise VlabError("a flag needs a value after it", field=word, value=words, fix=f"{word} VALUE")
        found[word] = _normalise(word, words[index + 1])
    return found


def _normalise(flag: str, value: str) -> Any:
    if flag in ("-kernel", "-initrd"):
        return str(Path(value).expanduser().resolve())
    if flag == "-append":
        return frozenset(word for word in value.split() if not word.startswith("vlab."))
    if flag == "-smp":
        return value.split(",")[0].removeprefix("cpus=")
    return value.strip()


def compare_argv(student: Sequence[str], reference: Sequence[str]) -> list[str]:
    """Differences in the graded flags, one readable line each (empty when they agree)."""
    mine, theirs = essential_flags(student), essential_flags(reference)
    problems = []
    for flag in GRADED_FLAGS:
        if mine[flag] == theirs[flag]:
            continue
        if flag == "-append" and mine[flag] is not None and theirs[flag] is not None:
            missing, extra = sorted(theirs[flag] - mine[flag]), sorted(mine[flag] - theirs[flag])
            problems.append(f"-append: missing {missing}, unexpected {extra}")
        else:
            problems.append(f"{flag}: expected {_show(theirs[flag])}, got {_show(mine[flag])}")
    return problems


def _show(value: Any) -> str:
    if isinstance(value, frozenset):
        return " ".join(sorted(value))
    return "nothing" if value is None else repr(value)


def explain_argv(argv: Sequence[str]) -> str:
    """Explain a command line flag by flag (one line per flag and its value)."""
    lines = []
    index = 0
    while index < len(argv):
        word = argv[index]
        base = os.path.basename(word) if index == 0 else word
        value = ""
        if base in _FLAGS_WITH_VALUE and index + 1 < len(argv) and base.startswith("-"):
            value = argv[index + 1]
            index += 1
        meaning = FLAG_MEANINGS.get(base, "(not explained here: see `man qemu-system`)")
        shown = f"{base} {value}".strip()
        if len(shown) > 46:
            shown = shown[:43] + "..."
        lines.append(f"{shown:<47} {meaning}")
        index += 1
    return "\n".join(lines)


# ---------------------------------------------------------------- step 4: boot, network


def lab_configs(mem_mib: int, partner_mem_mib: int, *, bridge: str = "lab01") -> tuple[VMConfig, VMConfig, str]:
    """The lab's two VMs and a note on the private bridge.

    ``vm1`` has a user-mode NAT NIC (``10.0.2.15``, gateway ``10.0.2.2`` inside QEMU) and, where the host
    allows bridges (root), a second NIC on a private bridge shared with ``vm2`` (``10.0.1.1`` and
    ``10.0.1.2``). Without root ``vm2`` gets no NIC and the note says why.
    """
    ok, why = bridge_supported()
    nat = Nic("user", ip="10.0.2.15/24")
    append = "console=ttyS0 quiet panic=-1 vlab.gw=10.0.2.2"
    if ok:
        vm1_nics: tuple[Nic, ...] = (nat, Nic("bridge", bridge=bridge, ip="10.0.1.1/24"))
        vm2_nics: tuple[Nic, ...] = (Nic("bridge", bridge=bridge, ip="10.0.1.2/24"),)
        note = f"private bridge br-{bridge}: vm1 10.0.1.1 <-> vm2 10.0.1.2"
    else:
        vm1_nics, vm2_nics = (nat,), ()
        note = f"no private bridge here ({why}): vm2 boots without a NIC, the ping is skipped"
    vm1 = VMConfig(name="vm1", mem=mem_mib, append=append, nics=vm1_nics)
    vm2 = VMConfig(name="vm2", mem=partner_mem_mib, nics=vm2_nics)
    return vm1, vm2, note


def boot_together(*vms: VM, timeout: float = 60.0) -> list[float]:
    """Start VMs in parallel (one thread each) and return their boot times in seconds.

    If any fails, every one is stopped before the first error is re-raised: nothing is left behind.
    """
    errors: list[BaseException] = []

    def boot(vm: VM) -> None:
        try:
            vm.start(timeout=timeout)
        except BaseException as exc:  # collected and re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(vm,), name=f"boot-{vm.config.name}") for vm in vms]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        _stop_all(vms)
        raise
    if errors:
        _stop_all(vms)
        raise errors[0]
    return [float(vm.boot_seconds or 0.0) for vm in vms]


def _stop_all(vms: Sequence[VM]) -> None:
    for vm in vms:
        with contextlib.suppress(Exception):  # best effort: the others must still be stopped
            vm.kill()


def free_total_mib(free_output: str) -> int:
    """The ``total`` column of the ``Mem:`` line of ``free -m``.

    :raises VlabError: if the text has no ``Mem:`` line.
    """
    match = re.search(r"(?m)^Mem:\s+(\d+)", free_output)
    if not match:
        raise VlabError("no 'Mem:' line in this output", field="free_output", value=free_output[:200],
                        fix="pass the output of `free -m`")
    return int(match.group(1))


# ---------------------------------------------------------------- step 5: QMP and control


def vcpu_table(vm: VM) -> str:
    """One line per vCPU: its index, the host thread running it and the CPU time that thread used."""
    pid = vm.pid
    lines = [f"QEMU pid {pid}", f"{'vCPU':<5} {'host thread':<12} {'thread name':<18} CPU seconds"]
    for cpu in vm.vcpus():
        try:
            name = Path(f"/proc/{pid}/task/{cpu.thread_id}/comm").read_text().strip()
        except OSError:
            name = "?"
        seconds = thread_cpu_seconds(int(pid or 0), cpu.thread_id)
        lines.append(f"{cpu.index:<5} {cpu.thread_id:<12} {name:<18} {seconds:.2f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PauseObservation:
    """Guest time against host time across a pause (seconds).

    :ivar host_elapsed: host time between the two guest readings.
    :ivar guest_elapsed: how much the guest's ``/proc/uptime`` advanced meanwhile.
    :ivar paused_for: how long the vCPUs were stopped.
    :ivar status_while_paused: QMP ``query-status`` during the pause.
    """

    host_elapsed: float
    guest_elapsed: float
    paused_for: float
    status_while_paused: str

    @property
    def missing(self) -> float:
        """Host time the guest did not see."""
        return self.host_elapsed - self.guest_elapsed

    def __str__(self) -> str:
        return (f"paused {self.paused_for:.2f} s (QMP status: {self.status_while_paused}); "
                f"host clock advanced {self.host_elapsed:.2f} s, guest uptime {self.guest_elapsed:.2f} s: "
                f"the guest missed {self.missing:.2f} s")


def guest_uptime(vm: VM) -> float:
    """The guest's ``/proc/uptime`` (seconds since its kernel started, by its own clock)."""
    return float(vm.console.run("cat /proc/uptime").output.split()[0])


def observe_pause(vm: VM, seconds: float) -> PauseObservation:
    """Read the guest's uptime, pause the VM for ``seconds``, resume, read it again."""
    before, host_before = guest_uptime(vm), time.monotonic()
    vm.pause()
    paused_at = time.monotonic()
    try:
        status = vm.status()
        time.sleep(seconds)
    finally:
        vm.resume()
    paused_for = time.monotonic() - paused_at
    after, host_after = guest_uptime(vm), time.monotonic()
    return PauseObservation(host_after - host_before, after - before, paused_for, status)


def vm_panel(vm: VM) -> Any:
    """A :class:`vlab.dashboards.VMPanel` for ``vm`` (its text form shows outside JupyterLab), or None if the
    dashboards cannot be imported here."""
    try:
        from vlab.dashboards import VMPanel
    except ImportError:
        return None
    return VMPanel(vm, interval=1.0)


# ---------------------------------------------------------------- running student code safely

def median_or_none(samples: Sequence[float] | None) -> float | None:
    """The median of ``samples``, or None for no samples (a helper for summaries)."""
    return statistics.median(samples) if samples else None
