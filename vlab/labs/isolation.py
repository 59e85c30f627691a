"""Lab 05 — isolation and security: attacks on four layers, and what stops each one.

The notebook ``labs/source/05-isolation.ipynb`` calls this module; each section is one layer, attacked
for real:

* **The toy VMM** (:mod:`vlab.toyvmm`). The only thing that keeps a toy guest inside its RAM is the
  VMM's bounds check, :meth:`~vlab.toyvmm.memory.GuestMemory.frame_of` (a real hypervisor's stage-2
  page tables play that part). :func:`toy_attack` places an *attacker* guest (``vm-images/toyvmm/
  attacker.S``) and then a *spy* (:data:`SPY_SOURCE`) just below a *victim* guest in the host's frame
  pool, plants the victim's secret, and runs both against a sound VMM, the deliberately weakened one
  (``Machine(weak_bounds=True)``), or the weakened one with a bounds check of the student's own
  installed (:func:`install_bounds_check`). The :class:`AttackReport` says what leaked and lists the
  audit trail: the VMM's recorded violations and its exit log.
* **Containers** (``unshare`` + cgroup v1). :func:`run_container` starts a command in new PID, mount,
  network, UTS and IPC namespaces, inside a cgroup with a memory and a pids limit; the command is held
  at a gate until it is in the cgroup, so every byte and every fork it makes is counted.
  :func:`container_support` says why this part is skipped where the host forbids it (Binder: no root).
* **Real VMs** (:mod:`vlab.qemu`). :func:`lab_vm_configs` describes up to three guests on private
  bridges (root only) and :func:`running_vms` boots them in parallel and always stops them.
  :func:`guest_view` records what a guest can see of its host; :class:`RawQMP` is a twenty-line QMP
  client, enough to show that *anyone* who can open a VM's QMP socket controls the VM;
  :func:`socket_access` reads that socket's permissions.
* **Data**. :func:`luks_image` makes a LUKS-encrypted qcow2 (a cached template: QEMU's key-slot
  set-up costs seconds of CPU); :func:`file_occurrences` counts a plaintext in the host's image file and
  :func:`dump_guest_memory` reads guest RAM from the host with QMP ``pmemsave``.

What the student writes — the bounds check, the leak finder, the comparison table — is deliberately
not here.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlab.errors import VlabError
from vlab.host import Cgroup, detect_cgroups, detect_namespaces
from vlab.paths import images_dir, runtime_dir
from vlab.qemu.network import ping

if TYPE_CHECKING:
    from vlab.qemu import VM, VMConfig
    from vlab.toyvmm import Machine, Violation

__all__ = [
    "ATTACKS",
    "BOUNDARIES",
    "LAB_PASSPHRASE",
    "NAMESPACES",
    "ROOTLESS",
    "SPY_SOURCE",
    "AttackReport",
    "BoundsCheck",
    "ContainerRun",
    "GuestView",
    "RawQMP",
    "SocketAccess",
    "container_memory_kib",
    "container_start_seconds",
    "container_support",
    "dump_guest_memory",
    "file_occurrences",
    "container_view",
    "guest_view",
    "host_view",
    "install_bounds_check",
    "lab_vm_configs",
    "luks_image",
    "median",
    "namespace_flags",
    "params_for",
    "ping",
    "python",
    "plain_process_seconds",
    "run_container",
    "running_vms",
    "socket_access",
    "topology",
    "toy_attack",
    "workspace",
]

_PAGE = 4096
_MIB = 1 << 20
#: RAM of every toy guest in the attack: the shipped attacker assumes 1 MiB (its neighbour starts there).
TOY_RAM = 1 << 20

# ---------------------------------------------------------------------------------------------- parameters

#: Attacks of the choice question: id -> what the attacker does.
ATTACKS: dict[str, str] = {
    "read-neighbour": "a toy guest's kernel loads from the physical address just past its RAM to read the "
                      "next guest's pages",
    "hypercall-deputy": "a guest asks the VMM, by hypercall, to print a buffer that lies in another guest's "
                        "memory",
    "list-host-processes": "a process in the container runs ps to find the host's processes",
    "fork-bomb": "a process in the container forks until the host runs out of process slots",
    "memory-hog": "a process in the container allocates memory until the host starts killing processes",
    "reach-host-port": "a process in the container connects to a service listening on the host's network "
                       "interface",
    "read-host-files": "a process in the container reads the host's /etc/shadow",
    "kernel-exploit": "a process in the container exploits a bug in one of the host kernel's system calls",
    "other-bridge": "a VM on another private bridge tries to connect to your VM",
    "steal-image": "the host's administrator copies your VM's disk image file and reads it",
    "dump-memory": "the hypervisor's operator dumps your running VM's memory and reads your key",
    "qmp-hijack": "another local user connects to your VM's QMP socket, then pauses the VM and dumps its memory",
}

#: Boundaries the choice question offers: id -> what it is.
BOUNDARIES: dict[str, str] = {
    "vmm-bounds": "the VMM's memory bounds check (its p2m / stage-2 page tables)",
    "pid-ns": "a PID namespace",
    "net-ns": "a network namespace, or a separate bridge",
    "mount-ns": "a mount namespace on its own",
    "new-root": "a root filesystem of its own (pivot_root into an image, as container runtimes do)",
    "cgroup": "a cgroup limit",
    "luks": "disk encryption (LUKS) with a key the host does not hold",
    "socket-perms": "file permissions on the QMP socket and its directory",
    "separate-kernel": "a separate guest kernel: the VM boundary",
    "confidential": "nothing on this host: only confidential computing (AMD SEV, Intel TDX) keeps guest "
                    "memory from the hypervisor",
}

#: The LUKS passphrase of the lab's encrypted disk. Not a secret: the point is what the host sees *without* it.
LAB_PASSPHRASE = "vlab-lab05-luks"


def params_for(seed: int) -> dict[str, Any]:
    """The per-student parameters of lab 05 (all plain JSON values)."""
    rng = random.Random(seed)
    same, other = rng.sample(["beta", "gamma"], 2)
    attacks = rng.sample(sorted(ATTACKS), 7)
    return {
        "victim_secret": f"victim-key-{rng.getrandbits(48):012x}",
        "secret_page": rng.randrange(0x20, 0xC0),
        "secret_offset": rng.randrange(0, _PAGE - 64, 8),
        "hostname": f"box-{rng.randrange(100, 1000)}",
        "memory_limit_mib": rng.choice([32, 40, 48, 56, 64]),
        "pids_max": rng.randrange(6, 14),
        "bridges": {"alpha": "red", same: "red", other: "blue"},
        "addresses": {"alpha": "10.55.0.1", "beta": "10.55.0.2", "gamma": "10.55.0.3"},
        "disk_secret": f"card-{rng.randrange(10**15, 10**16)}",
        "attacks": attacks,
    }


# ---------------------------------------------------------------------------------------------- toy VMM

#: A bounds check: (guest-physical address, guest RAM base, p2m list) -> host frame, or None to refuse.
BoundsCheck = Callable[[int, int, list[int | None]], int | None]

#: The spy: reads ``LENGTH`` bytes at ``TARGET`` (past its own RAM) twice — through the VMM (hypercall
#: ``CONSOLE_WRITE``, the VMM as a confused deputy) and with its own load — and prints what it got.
#: Its ``main`` goes after the guest kernel (:func:`vlab.toyvmm.programs.kernel_program`).
SPY_SOURCE = """\
        .equ TARGET, {target:#x}
        .equ LENGTH, {length}
main:
        la a0, banner
        call uart_puts
        li a0, TARGET
        li a1, LENGTH
        HYPERCALL HC_CONSOLE_WRITE      # the VMM copies TARGET..+LENGTH to our UART, or returns -1
        li a0, '\\n'
        call uart_putc
        li s2, TARGET
        li a0, -1
        ld a0, 0(s2)                    # our own load; if it faults the kernel skips it: a0 stays -1
        call uart_hex
        li a0, 0
        j shutdown
banner:
        .asciz "spy: reading past my RAM\\n"
"""


@dataclass
class AttackReport:
    """What two attacks on a victim guest achieved, and the VMM's audit trail of them.

    :ivar mode: ``"sound VMM"``, ``"weakened VMM"`` or ``"weakened VMM + your check"``.
    :ivar attacker_output: the UART output of ``attacker.S``: one digit per probe (2 = read and write both
        faulted), then the neighbour's bytes it got printed, then the hypercall's result in hex.
    :ivar spy_output: the UART output of the spy (:data:`SPY_SOURCE`).
    :ivar secret_leaked: the victim's secret appeared in the spy's output.
    :ivar victim_damaged: the victim's code page was changed by the attacker's write probes.
    :ivar violations: the violations the VMM recorded (attacker's machine, then spy's).
    :ivar audit: the exit-log lines of the attacks (illegal accesses and hypercalls).
    :ivar exit_counts: exits by reason of the attacker's machine.
    :ivar victim_state: the victim's state after the attacker ran (``running``, or ``killed`` by the VMM).
    """

    mode: str
    attacker_output: str
    spy_output: str
    secret_leaked: bool
    victim_damaged: bool
    violations: list[Violation] = field(default_factory=list)
    audit: list[str] = field(default_factory=list)
    exit_counts: dict[str, int] = field(default_factory=dict)
    victim_state: str = "running"

    @property
    def blocked_addresses(self) -> list[int]:
        """Distinct guest addresses the VMM refused, in the order first refused."""
        return list(dict.fromkeys(v.addr for v in self.violations))

    def summary(self) -> str:
        """A few lines for the notebook."""
        verdict = "LEAKED" if self.secret_leaked else "kept"
        lines = [f"{self.mode}: victim's secret {verdict}; victim's code "
                 f"{'OVERWRITTEN' if self.victim_damaged else 'intact'}, victim {self.victim_state}; "
                 f"{len(self.violations)} violations recorded",
                 "  attacker printed: " + _printable(self.attacker_output),
                 "  spy printed:      " + _printable(self.spy_output)]
        return "\n".join(lines)

    def violations_table(self) -> str:
        rows = [f"{'time':>8}  {'guest':<9} {'pc':>10}  {'address':>18}  {'access':<6} why"]
        rows += [f"{v.time:>8}  {v.guest:<9} {v.pc:#10x}  {v.addr:#18x}  {v.access:<6} {v.what}"
                 for v in self.violations]
        return "\n".join(rows)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "·" if c != "\n" else "⏎" for c in text)


def install_bounds_check(machine: Machine, check: BoundsCheck) -> None:
    """Make ``check`` the bounds check of every guest of ``machine`` (the TLB-fill hook, the instruction
    fetcher and the hypercall buffer reads all go through ``GuestMemory.frame_of``)."""
    frames = machine.host.frames
    for guest in machine.guests:
        memory = guest.memory

        def frame_of(gpa: int, memory: Any = memory) -> int | None:
            frame = check(gpa, memory.base, list(memory.p2m))
            if frame is not None and not 0 <= frame < frames:
                raise VlabError(f"the bounds check returned frame {frame} for address {gpa:#x}, but the host's "
                                f"pool has frames 0..{frames - 1} only", field="frame_of", value=frame,
                                fix="return p2m[index] for an index inside the guest's RAM, else None")
            return None if frame is None else int(frame)

        # an instance attribute shadows the method: the smallest adapter (toyvmm has no hook for this)
        setattr(memory, "frame_of", frame_of)  # noqa: B010


def _spy_program(params: dict[str, Any]) -> bytes:
    from vlab.toyvmm.programs import kernel_program

    target = _secret_gpa(params) + TOY_RAM
    source = SPY_SOURCE.format(target=target, length=len(params["victim_secret"]))
    return kernel_program(source, name="spy.S")


def _secret_gpa(params: dict[str, Any]) -> int:
    from vlab.toyvmm import RAM_BASE

    return int(RAM_BASE + params["secret_page"] * _PAGE + params["secret_offset"])


def _run_pair(program: bytes | str, params: dict[str, Any], weak_bounds: bool,
              check: BoundsCheck | None) -> tuple[str, bool, list[Violation], list[str], dict[str, int], str]:
    """One machine: the intruder in frames [0, 256), the victim right after it. Returns the intruder's
    output, whether the victim's code changed, the violations, the audit lines, the exit counts and the
    victim's state."""
    from vlab.toyvmm import RAM_BASE, ExitReason, GuestState, Machine

    with Machine(weak_bounds=weak_bounds, log=True) as machine:
        intruder = machine.add_guest(program, name="attacker" if isinstance(program, str) else "spy", ram=TOY_RAM)
        victim = machine.add_guest("compute", name="victim", ram=TOY_RAM)
        victim.memory.write(_secret_gpa(params), params["victim_secret"].encode())
        code_before = victim.memory.read(RAM_BASE, 64)
        if check is not None:
            install_bounds_check(machine, check)
        for _ in range(40):  # the victim never stops: run until the intruder has finished
            machine.run(ms=2)
            if intruder.state is not GuestState.RUNNING:
                break
        damaged = victim.memory.read(RAM_BASE, 64) != code_before
        audit = [str(r) for r in machine.log if r.guest == intruder.name
                 and r.reason in (ExitReason.ILLEGAL_ACCESS, ExitReason.HYPERCALL)]
        return (intruder.uart.text, damaged, list(machine.violations), audit, machine.exit_counts(),
                victim.state.value)


def toy_attack(params: dict[str, Any], *, weak_bounds: bool = False, check: BoundsCheck | None = None) -> AttackReport:
    """Run the attacker and the spy against a victim holding ``params["victim_secret"]``.

    :param weak_bounds: use the deliberately weakened VMM (its bounds check forgets the upper bound).
    :param check: install this bounds check instead of the VMM's (see :func:`install_bounds_check`).
    """
    mode = "weakened VMM" if weak_bounds else "sound VMM"
    if check is not None:
        mode += " + your check"
    attacker_out, damaged, violations, audit, counts, victim = _run_pair("attacker", params, weak_bounds, check)
    spy_out, _, spy_violations, spy_audit, _, _ = _run_pair(_spy_program(params), params, weak_bounds, check)
    leaked = params["victim_secret"] in spy_out or params["victim_secret"][:8][::-1].encode().hex() in spy_out
    return AttackReport(mode, attacker_out, spy_out, leaked, damaged, violations + spy_violations,
                        audit + spy_audit, counts, victim)


# ---------------------------------------------------------------------------------------------- containers

#: The namespaces of the lab's container, as ``unshare`` flags.
NAMESPACES = ("--pid", "--fork", "--mount-proc", "--mount", "--net", "--uts", "--ipc")
#: Without root: the same inside a new user namespace that maps you to its root (how rootless containers work).
ROOTLESS = ("--user", "--map-root-user")
#: Holds the command until the parent has moved it into the cgroup (``read`` returns at the newline).
_GATE = ["sh", "-c", 'read go && exec "$@"', "gate"]
_cgroup_ids = iter(range(1 << 30))
_flags_cache: list[tuple[str, ...] | None] = []


def namespace_flags() -> tuple[str, ...] | None:
    """The ``unshare`` flags of the lab's container on this host: :data:`NAMESPACES` as root, prefixed by
    :data:`ROOTLESS` otherwise; None if the host allows neither (Binder's container forbids ``unshare``)."""
    if not _flags_cache:
        choices: list[tuple[str, ...]] = [NAMESPACES] if os.geteuid() == 0 else []
        choices.append(ROOTLESS + NAMESPACES)
        found = None
        for flags in choices:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                if subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=10).returncode == 0:
                    found = flags
                    break
        _flags_cache.append(found)
    return _flags_cache[0]


def container_support() -> tuple[bool, bool, str]:
    """(namespaces usable, memory+pids cgroups usable, an explanation for the notebook)."""
    flags = namespace_flags()
    groups = detect_cgroups()
    cgroups_ok = all(groups.where(c) for c in ("memory", "pids"))
    if flags is None:
        why = (f"{detect_namespaces().describe()}: this host does not let this user create namespaces (as on "
               "Binder, whose notebooks run in a locked-down container): the container part is skipped")
    elif flags[:1] == ROOTLESS[:1]:
        why = "not root: a rootless container (a user namespace maps you to root inside it)"
    else:
        why = "root: PID, mount, network, UTS and IPC namespaces"
    why += "; " + groups.describe()
    if flags is not None and not cgroups_ok:
        why += ": no writable memory and pids controllers, so the limits are skipped"
    return flags is not None, cgroups_ok, why


@dataclass(frozen=True)
class ContainerRun:
    """One container run: its output, the exit status its shell reported, and what the cgroup saw.

    :ivar status: the inner shell's ``$?`` for the command (137 = killed by SIGKILL), None if unknown.
    :ivar oom_kills: processes the memory cgroup's OOM killer killed (None without a memory cgroup).
    :ivar pids_refused: forks the pids cgroup refused (None without a pids cgroup).
    """

    output: str
    status: int | None
    seconds: float
    oom_kills: int | None = None
    pids_refused: int | None = None


def run_container(command: Sequence[str], *, hostname: str | None = None, memory_limit_mib: int | None = None,
                  pids_max: int | None = None, timeout: float = 30.0) -> ContainerRun:
    """Run ``command`` as PID 1 of a new set of namespaces, optionally inside a limited cgroup.

    The cgroup is created below this process's own group and removed afterwards; the command is held at
    a gate until it has joined the group.

    :param hostname: set in the new UTS namespace before the command runs.
    :raises VlabError: if ``unshare`` fails or the command outlives ``timeout``.
    """
    inner = ["sh", "-c", 'h="$1"; shift; [ -z "$h" ] || hostname "$h"; "$@"; echo "vlab-status=$?"',
             "container", hostname or "", *command]
    flags = namespace_flags()
    if flags is None:
        raise VlabError("this host does not allow namespaces for this user", field="namespaces",
                        value=detect_namespaces().describe(), fix="run as root, or where user namespaces are allowed")
    argv = [*_GATE, "unshare", *flags, *inner]
    limited = memory_limit_mib is not None or pids_max is not None
    group = Cgroup(f"vlab-lab05-{os.getpid()}-{next(_cgroup_ids)}", ("memory", "pids")) if limited else None
    try:
        if group is not None:
            if memory_limit_mib is not None:
                group.set_memory_limit(memory_limit_mib * _MIB)
            if pids_max is not None:
                group.set_pids_max(pids_max)
        started = time.perf_counter()
        output = _run_gated(argv, group, timeout)
        seconds = time.perf_counter() - started
        oom, refused = _cgroup_events(group) if group is not None else (None, None)
    finally:
        if group is not None:
            group.remove()
    status = None
    if "vlab-status=" in output:
        output, _, tail = output.rpartition("vlab-status=")
        status = int(tail.split()[0])
    return ContainerRun(output, status, seconds, oom, refused)


def _run_gated(argv: list[str], group: Cgroup | None, timeout: float) -> str:
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        if group is not None:
            group.add(process.pid)
        output, _ = process.communicate("go\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VlabError("the container command did not finish", field="timeout", value=timeout,
                        fix="give it more time, or a command that ends") from None
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
    if "unshare:" in output and "vlab-status=" not in output:
        raise VlabError("unshare could not create the namespaces", field="namespaces", value=" ".join(argv),
                        fix="run as root (the lab skips this part where the host forbids it)", detail=output[-500:])
    return output


def _cgroup_events(group: Cgroup) -> tuple[int | None, int | None]:
    oom = refused = None
    with contextlib.suppress(OSError, KeyError, ValueError):
        text = (group.dirs["memory"][1] / "memory.oom_control").read_text()
        oom = int(dict(line.split() for line in text.splitlines()).get("oom_kill", "0"))
    with contextlib.suppress(OSError, KeyError, ValueError):
        refused = int((group.dirs["pids"][1] / "pids.events").read_text().split()[1])
    return oom, refused


def _timed_runs(argv: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first run warms the page cache: discarded
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=30)
        times.append(time.perf_counter() - started)
    return times[1:]


def container_start_seconds(repeats: int = 5) -> list[float]:
    """Seconds from spawn to exit of ``true`` in fresh namespaces (a container's whole start-up and exit)."""
    return _timed_runs(["unshare", *(namespace_flags() or NAMESPACES), "true"], repeats)


def plain_process_seconds(repeats: int = 5) -> list[float]:
    """The same for a plain ``true``: what starting any process costs (the baseline)."""
    return _timed_runs(["true"], repeats)


def container_memory_kib() -> list[int]:
    """Resident memory (KiB) of each process of an idle container running a shell, seen from the host."""
    process = subprocess.Popen(["unshare", *(namespace_flags() or NAMESPACES), "sh", "-c", "echo ready; read line"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        process.stdout.readline()
        return [_rss_kib(pid) for pid in [process.pid, *_descendants(process.pid)]]
    finally:
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.write("\n")
            process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------- real VMs

#: The guest kernel's IO-APIC timer check fails on a host too busy to run TCG guests on time (the guest
#: panics): skip it, as cloud images do.
_APPEND = "console=ttyS0 quiet panic=-1 no_timer_check"


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A private (0700) short-named directory for the lab's files, removed with everything in it."""
    path = Path(tempfile.mkdtemp(prefix="l5-", dir=runtime_dir()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def lab_vm_configs(params: dict[str, Any], *, bridges: bool, disk: Path | None = None,
                   qmp_socket: Path | None = None, mem: int = 128) -> list[VMConfig]:
    """alpha (with the encrypted disk and an extra QMP socket), and, with ``bridges``, beta and gamma on the
    seed's private bridges; without bridges (not root) only alpha, with no NIC."""
    from vlab.qemu import Disk, Nic, VMConfig

    names = ["alpha", "beta", "gamma"] if bridges else ["alpha"]
    configs = []
    for name in names:
        nics = (Nic(mode="bridge", bridge=params["bridges"][name], ip=f"{params['addresses'][name]}/24"),) \
            if bridges else ()
        extra: tuple[str, ...] = ()
        disks: tuple[Disk, ...] = ()
        if name == "alpha":
            if disk is not None:
                disks = (Disk(disk, secret=LAB_PASSPHRASE, overlay=False),)
            if qmp_socket is not None:
                extra = ("-qmp", f"unix:{qmp_socket},server=on,wait=off")
        configs.append(VMConfig(name=name, mem=mem, append=_APPEND, accel="auto", nics=nics, disks=disks,
                                balloon=False, extra_args=extra))
    return configs


def topology(params: dict[str, Any], *, bridges: bool = True) -> dict[str, list[dict[str, str | None]]]:
    """The lab VMs' NICs as plain data: VM name -> list of ``{"mode", "bridge", "ip"}`` (what q6 reasons on)."""
    if not bridges:
        return {"alpha": []}
    return {name: [{"mode": "bridge", "bridge": params["bridges"][name], "ip": f"{params['addresses'][name]}/24"}]
            for name in ("alpha", "beta", "gamma")}


@contextlib.contextmanager
def running_vms(configs: Sequence[VMConfig], timeout: float = 90.0) -> Iterator[list[VM]]:
    """Boot every config in parallel; yield the running VMs; stop them all, whatever happens."""
    from vlab.qemu import VM

    vms = [VM(c) for c in configs]
    try:
        # leaving the pool waits for every start, even on an error or Ctrl-C: no VM boots on unnoticed
        with ThreadPoolExecutor(max_workers=len(vms)) as pool:
            for future in [pool.submit(vm.start, timeout) for vm in vms]:
                future.result()
        yield vms
    finally:
        for vm in vms:
            try:
                vm.stop()
            except Exception:  # created, failed or already stopped: make sure no QEMU is left anyway
                with contextlib.suppress(Exception):
                    vm.kill()


@dataclass(frozen=True)
class GuestView:
    """What a guest reports about the machine it believes it runs on."""

    hostname: str
    kernel: str
    boot_id: str
    processes: int
    sees_host_file: bool


def _view_command(host_file: Path) -> str:
    return (f"hostname; uname -r; cat /proc/sys/kernel/random/boot_id; ls -d /proc/[0-9]* | wc -l; "
            f"cat {host_file} >/dev/null 2>&1 && echo visible || echo no-such-file")


def _parse_view(text: str) -> GuestView:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 5:
        raise VlabError("unexpected answer to the view command", field="output", value=text[-300:])
    hostname, kernel, boot_id, processes, marker = lines[-5:]
    return GuestView(hostname, kernel, boot_id, int(processes), marker == "visible")


def guest_view(vm: VM, host_file: Path) -> GuestView:
    """Ask the guest for its hostname, kernel, boot id, process count, and whether it can read ``host_file``."""
    return _parse_view(vm.console.run(_view_command(host_file)).output)


def container_view(host_file: Path, hostname: str) -> GuestView:
    """The same questions asked inside a fresh container (:func:`run_container`) named ``hostname``."""
    return _parse_view(run_container(["sh", "-c", _view_command(host_file)], hostname=hostname).output)


def host_view(host_file: Path) -> GuestView:
    """The same questions answered by the host itself."""
    done = subprocess.run(["sh", "-c", _view_command(host_file)], capture_output=True, text=True, timeout=30)
    return _parse_view(done.stdout)


@dataclass(frozen=True)
class SocketAccess:
    """Who can connect to a UNIX socket: connecting needs write permission on it and search on its directory."""

    path: str
    mode: str
    owner: str
    directory_mode: str
    who: str


def socket_access(path: Path) -> SocketAccess:
    """The socket's and its directory's permissions, and who may therefore connect (besides root)."""
    import pwd

    info, parent = path.stat(), path.parent.stat()
    classes = []
    if info.st_mode & stat.S_IWUSR and parent.st_mode & stat.S_IXUSR:
        classes.append("its owner")
    if info.st_mode & stat.S_IWGRP and parent.st_mode & stat.S_IXGRP:
        classes.append("its group")
    if info.st_mode & stat.S_IWOTH and parent.st_mode & stat.S_IXOTH:
        classes.append("every user")
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:  # a uid without a passwd entry (the grader's throw-away uid)
        owner = f"uid {info.st_uid}"
    return SocketAccess(str(path), stat.filemode(info.st_mode), owner, stat.filemode(parent.st_mode),
                        " and ".join(classes) or "nobody but root")


class RawQMP:
    """The whole QMP protocol in a few lines: JSON objects, one per line, over a UNIX socket.

    No password, no token: the greeting, ``qmp_capabilities``, and every command QEMU has — ``stop``,
    ``quit``, ``pmemsave``, ``human-monitor-command`` … — is available to whoever connected.
    """

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._stream = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        self.greeting: dict[str, Any] = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._stream.readline()
        if not line:
            raise VlabError("QEMU closed the QMP socket", field="qmp", fix="is the VM still running?")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Send one command; skip events; return its ``return`` value.

        :raises VlabError: with QEMU's error description.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = {k.replace("_", "-"): v for k, v in arguments.items()}
        self._stream.write(json.dumps(request) + "\n")
        self._stream.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise VlabError(f"QMP {command} failed", field="qmp", value=command,
                                detail=reply["error"].get("desc", str(reply["error"])))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
            self.sock.close()

    def __enter__(self) -> RawQMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- data

_template_lock = threading.Lock()


def luks_image(path: Path, size: str = "8M") -> Path:
    """A fresh LUKS-encrypted qcow2 at ``path`` (passphrase :data:`LAB_PASSPHRASE`), copied from a cached
    template because ``qemu-img`` spends seconds of CPU on LUKS key-slot set-up whatever the iteration time."""
    template = images_dir() / "lab05" / f"luks-{size}.qcow2"
    with _template_lock:
        try:
            if not template.is_file():
                template.parent.mkdir(parents=True, exist_ok=True)
                _create_luks(template, size)
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.copyfile(template, tmp)
            tmp.rename(path)
        except PermissionError:  # a cache this user cannot write (e.g. the grader's): make one here
            _create_luks(path, size)
    return path


def _create_luks(path: Path, size: str) -> None:
    from vlab.qemu.disks import create_image

    for attempt in range(5):
        try:
            create_image(path, size, secret=LAB_PASSPHRASE, iter_time_ms=50)  # temp file + rename inside
            return
        except VlabError as exc:
            # qemu-img's PBKDF benchmark fails at random when the thread's CPU time has not ticked yet
            if "accurate CPU usage" not in (exc.detail or "") or attempt == 4:
                raise


def file_occurrences(path: Path, needle: bytes) -> int:
    """How many times ``needle`` occurs in the file (the host's view of a disk image)."""
    return path.read_bytes().count(needle)


def dump_guest_memory(qmp: RawQMP, size: int, directory: Path) -> bytes:
    """Guest-physical memory ``[0, size)`` as the host reads it with QMP ``pmemsave`` (file removed after)."""
    target = directory / "guest-ram.bin"
    try:
        qmp.execute("pmemsave", val=0, size=size, filename=str(target))
        return target.read_bytes()
    finally:
        target.unlink(missing_ok=True)


def median(values: Sequence[float]) -> float:
    """The median (for the notebook's prints)."""
    return float(statistics.median(values))


def python() -> str:
    """The interpreter to run inside the container (the same as the notebook's)."""
    return sys.executable
