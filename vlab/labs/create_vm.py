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
   bridge where the host allows it); :func:`boot_pair` boots ``vm1`` from the student's own argv
   (:meth:`vlab.VM.from_argv`, for the vm.conf of :func:`vm1_conf`) next to ``vm2``, in parallel
   (:func:`boot_together`), and never leaves one behind; :func:`free_total_mib` / :func:`ping` read the
   guest's answers.
5. **Inspect and control it over QMP**: :func:`vcpu_table`, :func:`vm_panel` (a
   :class:`vlab.dashboards.VMPanel`, with a text fallback); the student speaks raw QMP over
   :meth:`vlab.VM.raw_qmp` and :func:`observe_qmp_pause` measures what their commands did to the real VM
   (guest time stops while the host's goes on); :class:`FakeQMP` and :func:`qmp_scenario` try the same
   functions on QEMUs in other states. :func:`observe_pause` is vlab's own pause, for comparison.

The graded answers are not here: the reference solutions live in the source notebook.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.labs.notebook import attempt
from vlab.qemu import VM, Nic, VMConfig, default_initrd, default_kernel
from vlab.qemu.metrics import thread_cpu_seconds
from vlab.qemu.network import PingResult, bridge_supported, ping

__all__ = [
    "FLAG_MEANINGS",
    "GRADED_FLAGS",
    "FakeQMP",
    "HostResources",
    "LabBoot",
    "PauseObservation",
    "PingResult",
    "attempt",
    "boot_pair",
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
    "observe_qmp_pause",
    "ping",
    "qmp_scenario",
    "reference_argv",
    "describe_qmp_pause",
    "vcpu_table",
    "vm1_conf",
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
    "-rtc": "the guest's real-time clock: clock=vm makes it follow the VM's clock (it stands still while paused)",
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


def vm1_conf(config: VMConfig) -> str:
    """The vm.conf the student's ``conf_to_argv`` turns into vm1's command line: ``config``'s memory and vCPUs,
    the textbook root line, and kernel words without ``console=ttyS0`` (their argv must add it)."""
    return classic_conf(default_kernel(), default_initrd(), mem=f"{config.mem}M", vcpus=config.vcpus,
                        appended="quiet panic=-1 no_timer_check")


@dataclass
class LabBoot:
    """vm1 and vm2, booted; ``from_your_argv``: vm1 runs the student's argv (else vlab's, and ``note`` says why)."""

    vm1: VM
    vm2: VM
    seconds: list[float]
    from_your_argv: bool
    note: str

    def __str__(self) -> str:
        return (f"vm1 ({self.vm1.config.mem} MiB) and vm2 ({self.vm2.config.mem} MiB) booted in "
                f"{self.seconds[0]:.2f} s and {self.seconds[1]:.2f} s (in parallel)\n{self.note}")


def boot_pair(conf_to_argv: Any, conf_text: str, vm1_config: VMConfig, vm2_config: VMConfig, *,
              timeout: float = 60.0) -> LabBoot:
    """Boot vm1 from ``conf_to_argv(conf_text)`` (through :meth:`VM.from_argv`) and vm2 from its config, together.

    If the function is unanswered, raises, returns an argv vlab refuses, or its VM does not boot, vm1 boots from
    ``vm1_config`` instead and the note says why (so the rest of the lab can go on); nothing is left running
    when this raises.
    """
    argv, why = None, ""
    try:
        argv = conf_to_argv(conf_text)
    except NotImplementedError:
        why = "conf_to_argv is not answered yet"
    except Exception as exc:  # the student's code: any bug is reported, the lab goes on
        why = f"conf_to_argv raised {type(exc).__name__}: {exc}"
    if argv is not None:
        try:
            vm1 = VM.from_argv(argv, name=vm1_config.name, nics=vm1_config.nics)
            vm2 = VM(vm2_config)
            seconds = boot_together(vm1, vm2, timeout=timeout)
            return LabBoot(vm1, vm2, seconds, True, "vm1 runs YOUR argv; vlab added only its plumbing:\n  "
                                                     + _shorten(vm1.argv))
        except VlabError as exc:
            why = f"vlab did not boot your argv: {exc}"
    vm1 = VM.from_argv(reference_argv(conf_text, vm1_config.name), name=vm1_config.name, nics=vm1_config.nics)
    vm2 = VM(vm2_config)
    seconds = boot_together(vm1, vm2, timeout=timeout)
    return LabBoot(vm1, vm2, seconds, False, f"vm1 runs vlab's argv instead, because {why}\n"
                                             "fix conf_to_argv, then run this cell again")


def reference_argv(conf_text: str, name: str = "vlab") -> list[str]:
    """vlab's own argv for a vm.conf, in the form :meth:`VM.from_argv` runs (the five graded flags)."""
    config = VMConfig.from_conf(conf_text, name=name)
    return ["qemu-system-x86_64", "-kernel", str(config.kernel), "-initrd", str(config.initrd),
            "-append", config.kernel_cmdline(), "-m", str(config.mem), "-smp", str(config.vcpus)]


def _shorten(argv: Sequence[str]) -> str:
    """The argv as a shell line, vlab's long plumbing words (JSON devices, socket paths) cut short."""
    return shlex.join(word if len(word) <= 60 or not word.startswith(("{", "socket,")) else word[:57] + "..."
                      for word in argv)


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


_CONT_REFUSED = "Resetting the Virtual Machine is required"


class FakeQMP:
    """A stand-in for QEMU's QMP, at the level of ``send`` (one JSON object in, the reply out).

    It keeps QEMU's rules that the lab's commands meet: nothing but ``qmp_capabilities`` before the handshake
    (``CommandNotFound``), then ``query-status``, ``stop``, ``cont``. ``state`` is the run state it starts in
    (``running``, or e.g. ``io-error``: a disk error paused the VM, and ``stop`` leaves that state as it is);
    ``refuse_cont`` makes ``cont`` fail as it does after a guest crash.
    """

    def __init__(self, state: str = "running", *, refuse_cont: bool = False) -> None:
        self.state = state
        self.refuse_cont = refuse_cont
        self.negotiated = False
        self.sent: list[Any] = []

    @staticmethod
    def _error(klass: str, desc: str) -> dict[str, Any]:
        return {"error": {"class": klass, "desc": desc}}

    def send(self, message: Any) -> dict[str, Any]:
        """What QEMU answers to ``message``."""
        if not isinstance(message, dict):
            raise VlabError("send one JSON object (a dict)", field="message", value=repr(message)[:80])
        self.sent.append(message.get("execute"))
        command = message.get("execute")
        if not self.negotiated:
            if command == "qmp_capabilities":
                self.negotiated = True
                return {"return": {}}
            return self._error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
        if command == "query-status":
            return {"return": {"status": self.state, "running": self.state == "running", "singlestep": False}}
        if command == "stop":
            self.state = "paused" if self.state == "running" else self.state
            return {"return": {}}
        if command == "cont":
            if self.refuse_cont:
                return self._error("GenericError", _CONT_REFUSED)
            self.state = "running"
            return {"return": {}}
        if command == "qmp_capabilities":
            return self._error("CommandNotFound", "Capabilities negotiation is already complete, command ignored")
        return self._error("CommandNotFound", f"The command {command} has not been found")


def _outcome(function: Any, send: Any) -> dict[str, Any]:
    """What a student's function did: returned a value (JSON-able) or raised (name and message)."""
    try:
        value = function(send)
    except NotImplementedError:
        raise  # unanswered: the grader says so
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)[:300]}
    return {"returned": value if isinstance(value, str | int | float | bool | type(None)) else repr(value)[:200]}


def qmp_scenario(handshake: Any, pause: Any, resume: Any, state: str = "running",
                 refuse_cont: bool = False) -> dict[str, Any]:
    """Run the student's ``handshake``, ``pause`` and ``resume`` on a :class:`FakeQMP`; what each did, and the
    fake's state after it. NotImplementedError (an unanswered stub) propagates."""
    fake = FakeQMP(state, refuse_cont=refuse_cont)
    report: dict[str, Any] = {}
    for step, function in (("handshake", handshake), ("pause", pause), ("resume", resume)):
        report[step] = {**_outcome(function, fake.send), "state": fake.state}
    report["sent"] = list(fake.sent)
    return report


def observe_qmp_pause(vm: VM, handshake: Any, pause: Any, resume: Any, seconds: float) -> dict[str, Any] | None:
    """The student's raw QMP functions on the real ``vm``: handshake, pause, wait ``seconds``, resume.

    What vlab saw (its own ``query-status`` after each step, the guest's uptime against the host clock) and
    what the functions returned. None if they are unanswered. Whatever they do, the VM is running when this
    returns (vlab resumes it) and the raw connection is closed.
    """
    before, host_before = guest_uptime(vm), time.monotonic()
    result: dict[str, Any] = {"seconds": seconds}
    try:
        with vm.raw_qmp() as qmp:
            result["greeting"] = "QMP" in qmp.greeting
            for step, function in (("handshake", handshake), ("pause", pause)):
                result[step] = _outcome(function, qmp.send)
            result["status_after_pause"] = vm.status()
            paused_at = time.monotonic()
            time.sleep(seconds)
            result["resume"] = _outcome(resume, qmp.send)
            result["status_after_resume"] = vm.status()
            result["paused_for"] = time.monotonic() - paused_at
            result["sent"] = [m.get("execute") for m in qmp.sent]
    except NotImplementedError as exc:
        print(f"not answered yet ({exc}): skipped")
        return None
    finally:
        if vm.status() != "running":
            vm.qmp("cont")  # the student's code left it paused (or failed half-way): the lab goes on
    after, host_after = guest_uptime(vm), time.monotonic()
    result.update(host_elapsed=host_after - host_before, guest_elapsed=after - before)
    return result


def describe_qmp_pause(seen: dict[str, Any] | None) -> str:
    """A few lines on what :func:`observe_qmp_pause` saw."""
    if seen is None:
        return "nothing measured yet"
    def said(outcome: dict[str, Any]) -> str:
        return f"raised {outcome['raised']}: {outcome['message']}" if "raised" in outcome else \
            f"returned {outcome['returned']!r}"
    return "\n".join([
        f"you sent: {', '.join(str(c) for c in seen.get('sent', []))}",
        f"qmp_handshake {said(seen['handshake'])}",
        f"pause_with_qmp {said(seen['pause'])}; vlab's query-status then: {seen['status_after_pause']}",
        f"resume_with_qmp {said(seen['resume'])}; vlab's query-status then: {seen['status_after_resume']}",
        f"host clock advanced {seen['host_elapsed']:.2f} s, the guest's uptime {seen['guest_elapsed']:.2f} s: "
        f"the guest missed {seen['host_elapsed'] - seen['guest_elapsed']:.2f} s",
    ])


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
