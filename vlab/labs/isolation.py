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
* **Containers** (``unshare`` + cgroups). The student writes the container: its ``unshare`` command line
  and its cgroup limit files. :func:`run_container` runs that command line with the student's rights inside
  a fresh cgroup holding those limits (only files in :data:`LIMIT_FILES`); the command is held at a gate
  until it is in the cgroup, so every byte and every fork it makes is counted. :func:`container_support`
  says why this part is skipped where the host forbids it (Binder: no namespaces).
* **Real VMs** (:mod:`vlab.qemu`). :func:`lab_vm_configs` describes up to three guests on private
  bridges (root only) and :func:`running_vms` boots them in parallel and always stops them.
  :func:`guest_view` records what a guest can see of its host; :class:`RawQMP` is a twenty-line QMP
  client, enough to show that *anyone* who can open a VM's QMP socket controls the VM;
  :func:`socket_access` reads that socket's permissions.
* **Data**. ``alpha`` gets a :func:`blank_disk` that QEMU passes through unencrypted; the student's code
  encrypts it *inside the guest* (LUKS2 with the guest's own cryptsetup and dm-crypt, the passphrase typed at
  the guest's console) and dumps the guest's RAM from the host over a raw QMP socket
  (:class:`~vlab.qemu.argv.RawQMP`, the same client as lab 01's). :func:`volume_key` reads the key dm-crypt
  holds, for the student's search of the dump.

What the student writes — the bounds check, the container's command line and cgroup limits, the leak
finder, the comparison table — is deliberately not here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlab.errors import VlabError
from vlab.host import Cgroup, detect_cgroups, detect_namespaces
from vlab.host.namespaces import NamespaceSupport
from vlab.paths import runtime_dir
from vlab.qemu.argv import RawQMP
from vlab.qemu.network import ping

if TYPE_CHECKING:
    from vlab.qemu import VM, VMConfig
    from vlab.qemu.console import Console
    from vlab.toyvmm import Machine, Violation

__all__ = [
    "ATTACKS",
    "BOUNDARIES",
    "LUKS_MAGIC",
    "CONTAINER_NAMESPACES",
    "IDLE_COMMAND",
    "LIMIT_FILES",
    "SPY_SOURCE",
    "AttackReport",
    "BoundsCheck",
    "ContainerRun",
    "GuestView",
    "RawQMP",
    "blank_disk",
    "SocketAccess",
    "container_memory_kib",
    "container_start_seconds",
    "cgroup_version",
    "container_support",
    "container_view",
    "guest_view",
    "host_view",
    "install_bounds_check",
    "lab_vm_configs",
    "volume_key",
    "median",
    "needs_user_namespace",
    "params_for",
    "ping",
    "python",
    "plain_process_seconds",
    "reporting_status",
    "run_container",
    "running_vms",
    "socket_access",
    "topology",
    "view_command",
    "toy_attack",
    "workspace",
]

_PAGE = 4096
_WORDS = ("amber", "basalt", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "indigo", "juniper")
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
        # typed into the guest only: never on a QEMU command line or in a host file
        "passphrase": f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{rng.randrange(100, 1000)}",
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

#: The namespace kinds of the lab's container (what the student's ``unshare`` command line must create).
CONTAINER_NAMESPACES = ("pid", "mount", "net", "uts", "ipc")
#: Holds the command until the parent has moved it into the cgroup (``read`` returns at the newline).
_GATE = ["sh", "-c", 'read go && exec "$@"', "gate"]
_cgroup_ids = iter(range(1 << 30))


@functools.cache
def _namespaces() -> NamespaceSupport:
    return detect_namespaces()


def needs_user_namespace() -> bool:
    """True if this user gets the container's namespaces only inside a user namespace that maps it to root (a
    rootless container: not root here, or the grader's throw-away user)."""
    return any(kind in _namespaces().rootless for kind in CONTAINER_NAMESPACES)


def container_support() -> tuple[bool, bool, str]:
    """(namespaces usable, memory+pids cgroups usable, an explanation for the notebook)."""
    support = _namespaces()
    ns_ok = all(kind in support.available for kind in CONTAINER_NAMESPACES)
    cgroups_ok = cgroup_version() is not None
    if not ns_ok:
        why = (f"{support.describe()}: this host does not let this user create namespaces (as on Binder, whose "
               "notebooks run in a locked-down container): the container part is skipped")
    elif needs_user_namespace():
        why = "not root: a rootless container (a user namespace maps you to root inside it)"
    else:
        why = "root: PID, mount, network, UTS and IPC namespaces"
    why += "; " + detect_cgroups().describe()
    if ns_ok and not cgroups_ok:
        why += ": no writable memory and pids controllers of one cgroup version, so the limits are skipped"
    return ns_ok, cgroups_ok, why


@dataclass(frozen=True)
class ContainerRun:
    """One container run: its output, its exit status, and what the cgroup saw.

    :ivar status: the container's exit status as a shell reports it (137 = killed by SIGKILL).
    :ivar oom_kills: processes the memory cgroup's OOM killer killed (None without a memory limit).
    :ivar pids_refused: forks the pids cgroup refused (None without a pids limit).
    """

    output: str
    status: int
    seconds: float
    oom_kills: int | None = None
    pids_refused: int | None = None


#: The only cgroup files a container's limits may write, each with its controller and what it means. vlab writes
#: nothing else into a group (a student's dict naming ``cgroup.procs`` or ``../x`` is refused).
LIMIT_FILES: dict[str, tuple[str, str]] = {
    "memory.limit_in_bytes": ("memory", "v1: the memory limit in bytes"),
    "memory.memsw.limit_in_bytes": ("memory", "v1: memory + swap, in bytes (exists where swap is accounted)"),
    "memory.max": ("memory", "v2: the memory limit in bytes"),
    "memory.swap.max": ("memory", "v2: the swap limit in bytes"),
    "pids.max": ("pids", "v1 and v2: the most tasks the group may hold"),
}
#: Swap limits are written only where the host accounts swap (their file exists); every other file must exist.
_SWAP_FILES = ("memory.memsw.limit_in_bytes", "memory.swap.max")


def cgroup_version() -> int | None:
    """The cgroup version (1 or 2) of this host's memory and pids controllers; None if either is not writable."""
    groups = detect_cgroups()
    places = [groups.where(c) for c in ("memory", "pids")]
    versions = {place[0] for place in places if place is not None}
    return versions.pop() if None not in places and len(versions) == 1 else None


def _checked_argv(argv: object) -> list[str]:
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(w, str) for w in argv):
        raise VlabError("a container's command line must be a non-empty list of strings", field="argv",
                        value=repr(argv)[:120], fix='return a list like ["unshare", "--pid", ..., "sh", "-c", ...]')
    if any("\0" in word for word in argv):
        raise VlabError("a command-line word cannot hold a NUL byte", field="argv", value=repr(argv)[:120],
                        fix="remove the NUL")
    return list(argv)


def _checked_limits(limits: object) -> list[tuple[str, str]]:
    if not isinstance(limits, dict):
        raise VlabError("limits must be a dict {cgroup file name: value}", field="limits",
                        value=repr(limits)[:120], fix='return e.g. {"pids.max": "20", ...}')
    checked = []
    for name, value in limits.items():
        if name not in LIMIT_FILES:
            raise VlabError("not a limit file a container may set", field="limits", value=repr(name)[:80],
                            fix="use one of " + ", ".join(LIMIT_FILES))
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not ((text.isascii() and text.isdigit()) or text == "max"):
            raise VlabError("a limit is a whole number (or max), as text", field=f"limits[{name!r}]",
                            value=repr(value)[:80], fix='write it like "41943040"')
        checked.append((name, text))
    return checked


def _apply_limits(group: Cgroup, limits: list[tuple[str, str]]) -> None:
    for name, value in limits:
        controller = LIMIT_FILES[name][0]
        version, directory = group.dirs[controller]
        target = directory / name
        if not target.exists():
            if name in _SWAP_FILES:
                continue
            other = "v2" if version == 1 else "v1"
            raise VlabError(f"this host's {controller} controller is cgroup v{version}: it has no {name}",
                            field="limits", value=name, fix=f"that is the {other} name: use the v{version} file")
        try:
            target.write_text(value)
        except OSError as exc:
            raise VlabError(f"the kernel refused {name} = {value}", field=f"limits[{name!r}]", value=value,
                            fix="on v1 set memory.limit_in_bytes before memory.memsw.limit_in_bytes (memsw may "
                                "not be below it)", detail=str(exc)) from None


#: Marks the exit status that :func:`reporting_status` prints as the container's last line.
_STATUS = "vlab-status="


def reporting_status(command: Sequence[str]) -> list[str]:
    """``command`` wrapped so that it prints its exit status last, read by :func:`run_container`.

    ``unshare --fork`` cannot pass on a child's SIGKILL (it fails re-raising it and exits 1), so an
    OOM-killed command's 137 is only known from inside the container.
    """
    return ["sh", "-c", f'"$@"; echo "{_STATUS}$?"', "container", *command]


def run_container(argv: Sequence[str], *, limits: dict[str, str] | None = None,
                  timeout: float = 30.0) -> ContainerRun:
    """Run a container's command line ``argv`` (e.g. ``unshare ...``), with ``limits`` written into a fresh cgroup.

    The command is held at a gate until it has joined the group, so every byte and every fork it makes is
    counted; the group is created below this process's own group and removed afterwards. The command runs with
    this process's rights: vlab adds nothing to it.

    :raises VlabError: for a malformed ``argv`` or ``limits``, if ``unshare`` fails, or on ``timeout``.
    """
    words = _checked_argv(argv)
    settings = _checked_limits(limits) if limits is not None else []
    controllers = tuple(sorted({LIMIT_FILES[name][0] for name, _ in settings}))
    group = Cgroup(f"vlab-lab05-{os.getpid()}-{next(_cgroup_ids)}", controllers) if controllers else None
    try:
        if group is not None:
            _apply_limits(group, settings)
        started = time.perf_counter()
        output, returncode = _run_gated([*_GATE, *words], group, timeout)
        seconds = time.perf_counter() - started
        oom = refused = None
        if group is not None:
            oom = group.oom_kills() if "memory" in controllers else None
            refused = group.pids_refused() if "pids" in controllers else None
    finally:
        if group is not None:
            group.remove()
    status = 128 - returncode if returncode < 0 else returncode  # killed by a signal: as a shell reports it
    if _STATUS in output:
        output, _, tail = output.rpartition(_STATUS)
        with contextlib.suppress(IndexError, ValueError):
            status = int(tail.split()[0])
    return ContainerRun(output, status, seconds, oom, refused)


def _run_gated(argv: list[str], group: Cgroup | None, timeout: float) -> tuple[str, int]:
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)
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
    if _STATUS not in output and "unshare failed" in output:
        raise VlabError("unshare could not create the namespaces", field="argv", value=" ".join(argv[len(_GATE):]),
                        fix="as a user that is not root, start with --user --map-root-user", detail=output[-500:])
    return output, process.returncode


def _timed_runs(argv: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first run warms the page cache: discarded
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=30)
        times.append(time.perf_counter() - started)
    return times[1:]


def container_start_seconds(argv: Sequence[str], repeats: int = 5) -> list[float]:
    """Seconds from spawn to exit of a container's command line ``argv`` that runs ``true`` (its whole start-up
    and exit)."""
    return _timed_runs(_checked_argv(argv), repeats)


def plain_process_seconds(repeats: int = 5) -> list[float]:
    """The same for a plain ``true``: what starting any process costs (the baseline)."""
    return _timed_runs(["true"], repeats)


#: What an idle container runs while :func:`container_memory_kib` measures it: say "ready", wait for a line.
IDLE_COMMAND = ["sh", "-c", "echo ready; read line"]


def container_memory_kib(argv: Sequence[str]) -> list[int]:
    """Resident memory (KiB) of each process of a container's command line ``argv`` that runs
    :data:`IDLE_COMMAND`, seen from the host."""
    process = subprocess.Popen(_checked_argv(argv),
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
    """alpha (with the blank disk and an extra QMP socket), and, with ``bridges``, beta and gamma on the
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
                disks = (Disk(disk, overlay=False),)  # plain: the guest encrypts it, QEMU holds no key
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
            f"cat {shlex.quote(str(host_file))} >/dev/null 2>&1 && echo visible || echo no-such-file")


def view_command(host_file: Path) -> list[str]:
    """The command whose output :func:`container_view` reads: hostname, kernel, boot id, process count and
    whether ``host_file`` is readable."""
    return ["sh", "-c", _view_command(host_file)]


def _parse_view(text: str) -> GuestView:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 5:
        raise VlabError("unexpected answer to the view command", field="output", value=text[-300:])
    hostname, kernel, boot_id, processes, marker = lines[-5:]
    return GuestView(hostname, kernel, boot_id, int(processes), marker == "visible")


def guest_view(vm: VM, host_file: Path) -> GuestView:
    """Ask the guest for its hostname, kernel, boot id, process count, and whether it can read ``host_file``."""
    return _parse_view(vm.console.run(_view_command(host_file)).output)


def container_view(argv: Sequence[str]) -> GuestView:
    """The same questions asked inside a container: ``argv`` is its command line running :func:`view_command`."""
    return _parse_view(run_container(argv).output)


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


# ---------------------------------------------------------------------------------------------- data

def blank_disk(path: Path, size_mib: int = 32) -> Path:
    """A blank raw disk image of ``size_mib`` MiB at ``path`` (sparse): QEMU gives it to the guest as it is, with no
    encryption and no key of its own -- whatever protects its contents, the guest must do it."""
    with open(path, "xb") as image:
        image.truncate(size_mib * _MIB)
    return path


#: The magic bytes a LUKS header (version 1 or 2) starts with.
LUKS_MAGIC = b"LUKS\xba\xbe"


def volume_key(console: Console, device: str, passphrase: str) -> bytes:
    """The dm-crypt volume key of the open LUKS ``device``, as the guest's ``cryptsetup luksDump
    --dump-volume-key`` shows it to whoever knows the passphrase (it goes in on stdin, never on a command line)."""
    answer = console.run(f"printf %s {shlex.quote(passphrase)} | cryptsetup luksDump --dump-volume-key --batch-mode "
                         f"--key-file=- {shlex.quote(device)}", timeout=120)
    if not answer.ok:
        raise VlabError("cryptsetup could not dump the volume key", field="device", value=device,
                        fix="format and open the device first (your store_secret)", detail=answer.output[-500:])
    lines = answer.output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("MK dump:"):
            rows = [line.partition(":")[2], *(row for row in lines[i + 1:] if row.startswith(("\t", " ")))]
            return bytes.fromhex("".join(" ".join(rows).split()))
    raise VlabError("no volume key in cryptsetup's answer", field="device", value=device,
                    detail=answer.output[-500:])


def median(values: Sequence[float]) -> float:
    """The median (for the notebook's prints)."""
    return float(statistics.median(values))


def python() -> str:
    """The interpreter to run inside the container (the same as the notebook's)."""
    return sys.executable
