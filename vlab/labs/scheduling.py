"""Lab 04 — scheduling vCPUs and placing VMs: the lab's workloads, measurements and models.

Three scales of "who gets the CPU", each with its own section:

* **vCPUs on one toy host** (:mod:`vlab.toyvmm`): guests with different workloads share
  one physical CPU; :func:`run_mix` runs a seeded mix (:func:`seeded_mix`) under a
  scheduler and returns a :class:`MixResult` with what a scheduler is judged on — each
  guest's CPU share against its entitlement (weighted max-min fairness with caps), Jain's
  fairness index of received ÷ entitled, and the wake-up latency of the guests that sleep.
  :func:`score_scheduler` is the same as plain data, for the grader to judge a student's
  scheduler. :func:`lock_holder_preemption` runs two vCPUs of one guest that hand a spin
  lock back and forth, with or without yielding when they spin.
* **VMs on many hosts**: placement as vector bin packing over (CPU, memory, disk).
  :class:`Demand` is a resource vector; :func:`seeded_vms` the lab's VM list;
  :func:`replay_article_example` replays the reference article's worked example with
  the arithmetic done right; :func:`article_objective` is the article's objective
  (the *smallest* unused share), shown to be a poor target by :func:`objective_counterexample`;
  :func:`article_greedy` places VMs the way that objective suggests. First-fit
  decreasing is the student's to write, so it is deliberately not here.
* **Real vCPU threads** (:mod:`vlab.qemu`): a QEMU vCPU is a host thread;
  :func:`throttled_vcpus` moves those threads into a cgroup with a CPU quota and
  :func:`guest_loop_rate` measures, *inside the guest*, how fast a busy loop runs.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vlab import plots
from vlab.errors import VlabError
from vlab.host import Cgroup, detect_cgroups
from vlab.measure import jain_index
from vlab.plots import Slice

if TYPE_CHECKING:
    from vlab.qemu import VM
    from vlab.toyvmm import Scheduler

__all__ = [
    "CPU_BOUND",
    "FAIRNESS_TARGET",
    "HOST_CAPACITY",
    "LATENCY_TARGET_MS",
    "GuestSpec",
    "LockResult",
    "MixResult",
    "lock_holder_preemption",
    "params_for",
    "run_mix",
    "score_scheduler",
    "seeded_mix",
    "RESOURCES",
    "AllocationStep",
    "Demand",
    "LoopRate",
    "VMSpec",
    "article_greedy",
    "article_objective",
    "as_vms",
    "cpu_quota_support",
    "guest_loop_rate",
    "hosts_used",
    "lower_bound_hint",
    "objective_counterexample",
    "placement_problems",
    "placement_table",
    "replay_article_example",
    "seeded_vms",
    "show",
    "throttled_vcpus",
    "utilisation",
    "vcpu_threads",
]

# ================================================================ per-student parameters


def params_for(seed: int) -> dict[str, object]:
    """The lab's parameters for a student's seed (plain data, as the grader passes them to checks)."""
    rng = random.Random(seed)
    host = [rng.choice([4, 8, 16]), rng.choice([8, 16, 32]), rng.choice([200, 400, 500])]
    need = [rng.randint(1, host[0] // 2), rng.randint(1, host[1] // 2) * 1, rng.randrange(50, host[2] // 2 + 1, 10)]
    return {
        "mix_seed": rng.randrange(1 << 30),
        "vm_seed": rng.randrange(1 << 30),
        "vm_count": rng.choice([20, 22, 24, 26]),
        "example_host": host,
        "example_need": need,
        "quota": rng.choice([0.2, 0.25, 0.3]),
        "loop_iterations": rng.choice([6000, 7000, 8000]),
    }


# ================================================================ vCPUs on one toy host

#: guest programs that never block: they want the whole CPU (the fairness judgement is about them)
CPU_BOUND = ("compute", "hypercalls")
#: what a scheduler must reach on the lab's hidden mix: Jain's index of busy time ÷ weight …
FAIRNESS_TARGET = 0.97
#: … and the longest wait of a woken vCPU, in virtual milliseconds
LATENCY_TARGET_MS = 2.0


@dataclass(frozen=True)
class GuestSpec:
    """One guest of a mix: a program from :data:`vlab.toyvmm.PROGRAMS`, its weight and cap (percent)."""

    name: str
    program: str
    weight: int = 256
    cap: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> GuestSpec:
        """From a plain dict (what crosses into the grader): ``{"name": …, "program": …, …}``."""
        return cls(str(data["name"]), str(data["program"]), int(data.get("weight", 256)),  # type: ignore[call-overload]
                   int(data.get("cap", 0)))  # type: ignore[call-overload]


def seeded_mix(seed: int) -> list[GuestSpec]:
    """The lab's mix for a seed: three CPU-bound guests (weights 256 and 512), one that sleeps on its
    timer (an I/O-bound-looking guest), and one hypercall-heavy guest with a cap."""
    rng = random.Random(seed)
    weights = [256, 512, rng.choice([256, 512])]
    rng.shuffle(weights)
    return [
        GuestSpec("batch", "compute", weights[0]),
        GuestSpec("db", "compute", weights[1]),
        GuestSpec("render", "compute", weights[2]),
        GuestSpec("web", "sleeper", 256),
        GuestSpec("net", "hypercalls", 256, cap=rng.choice([10, 15, 20])),
    ]


@dataclass(frozen=True)
class MixResult:
    """What a run of a mix under one scheduler produced (times in virtual milliseconds).

    :ivar busy_ms: CPU time each guest received.
    :ivar wake_latency_ms: for each guest that sleeps, every wait from its timer firing to running.
    :ivar slices: the schedule, as :class:`vlab.plots.Slice` records for :func:`vlab.plots.gantt_chart`.
    :ivar exits: VM exits by reason, per guest.
    """

    scheduler: str
    duration_ms: float
    guests: tuple[GuestSpec, ...]
    busy_ms: dict[str, float]
    wake_latency_ms: dict[str, list[float]]
    slices: tuple[Slice, ...]
    exits: dict[str, dict[str, int]]

    @property
    def shares(self) -> dict[str, float]:
        """Each guest's fraction of the run."""
        return {g.name: self.busy_ms.get(g.name, 0.0) / self.duration_ms for g in self.guests}

    def entitled(self) -> dict[str, float]:
        """What each CPU-bound guest should get: the CPU left by the sleepers, split by weight,
        with capped guests held to their cap and the rest re-split (weighted max-min fairness)."""
        left = 1.0 - sum(self.shares[g.name] for g in self.guests if g.program not in CPU_BOUND)
        open_ = [g for g in self.guests if g.program in CPU_BOUND]
        fixed: dict[str, float] = {}
        while open_:
            total = sum(g.weight for g in open_)
            capped = [g for g in open_ if g.cap and g.cap / 100 < left * g.weight / total]
            if not capped:
                fixed.update({g.name: left * g.weight / total for g in open_})
                break
            for g in capped:
                fixed[g.name] = g.cap / 100
                left -= g.cap / 100
                open_.remove(g)
        return fixed

    @property
    def fairness(self) -> float:
        """Jain's index of received ÷ entitled over the CPU-bound guests (1.0 = exactly as entitled)."""
        entitled = self.entitled()
        return jain_index(self.shares[name] / share for name, share in entitled.items())

    @property
    def max_latency_ms(self) -> float:
        """The longest wait of any woken vCPU (0 when nothing slept)."""
        return max((x for waits in self.wake_latency_ms.values() for x in waits), default=0.0)

    def table(self) -> str:
        """Per guest: weight, cap, share received, share entitled, wake-up latency."""
        entitled = self.entitled()
        lines = [f"{self.scheduler}: {self.duration_ms:g} virtual ms, Jain's index {self.fairness:.3f}, "
                 f"longest wake-up wait {self.max_latency_ms:.2f} ms",
                 f"  {'guest':<8} {'program':<10} {'weight':>6} {'cap':>4} {'share':>7} {'entitled':>8}"
                 f" {'wake-ups':>8} {'median wait':>11}"]
        for g in self.guests:
            waits = sorted(self.wake_latency_ms.get(g.name, []))
            median = f"{waits[len(waits) // 2]:.2f} ms" if waits else "-"
            due = f"{entitled[g.name]:.1%}" if g.name in entitled else "-"
            lines.append(f"  {g.name:<8} {g.program:<10} {g.weight:>6} {g.cap or '-':>4} "
                         f"{self.shares[g.name]:>7.1%} {due:>8} {len(waits):>8} {median:>11}")
        return "\n".join(lines)


def run_mix(mix: Sequence[GuestSpec], scheduler: Scheduler | str, duration_ms: float = 150) -> MixResult:
    """Run the guests of ``mix`` on one toy machine under ``scheduler`` for ``duration_ms`` virtual ms.

    Deterministic: the same mix and scheduler give the same schedule (virtual time, no wall clock).
    """
    from vlab.toyvmm import INSNS_PER_MS, Machine

    with Machine(scheduler=scheduler) as machine:
        for spec in mix:
            machine.add_guest(spec.program, name=spec.name, weight=spec.weight, cap=spec.cap)
        trace = machine.run(ms=duration_ms)
        name = getattr(machine.scheduler, "name", type(machine.scheduler).__name__)
        busy = {g: t / INSNS_PER_MS for g, t in trace.busy_time().items()}
        waits = {g.name: [x / INSNS_PER_MS for v in g.vcpus for x in v.wake_latencies]
                 for g in machine.guests if any(v.wake_latencies for v in g.vcpus)}
        slices = tuple(trace.in_ms())
        return MixResult(str(name), machine.now / INSNS_PER_MS, tuple(mix), busy, waits, slices,
                         {g.name: g.exits for g in machine.guests})


def score_scheduler(make_scheduler: Callable[[], Scheduler], mix: Sequence[dict[str, object]],
                    duration_ms: float = 150) -> dict[str, object]:
    """Run a scheduler made by ``make_scheduler()`` on a mix given as plain dicts; plain-data results.

    What a check needs to judge a student's scheduler: Jain's index, the longest wake-up wait,
    the shares, and the scheduler's class ancestry (to see whether it is one of the provided ones).
    """
    scheduler = make_scheduler()
    from vlab.toyvmm import Scheduler

    if not isinstance(scheduler, Scheduler):  # isinstance, not type(): at grading time it is a remote reference
        raise VlabError("make_scheduler() must return a Scheduler object", field="make_scheduler",
                        value=type(scheduler).__name__, fix="return an instance of your Scheduler subclass")
    result = run_mix([GuestSpec.from_dict(g) for g in mix], scheduler, duration_ms)
    return {"fairness": result.fairness, "max_latency_ms": result.max_latency_ms, "shares": result.shares,
            "classes": [c.__name__ for c in scheduler.__class__.__mro__]}


# ---------------------------------------------------------------- lock-holder preemption

_SPINLOCK_GUEST = """
        .equ LOCK, 0x8000f200
        .equ SPINS, 0x8000f300
main:                                   # a0 = hart id; both vCPUs run this
        li s1, MAILBOX                  # MAILBOX[hart]: critical sections completed
        slli t0, a0, 3
        add s1, s1, t0
        li s2, SPINS                    # SPINS[hart]: failed attempts to take the lock
        add s2, s2, t0
        li s3, LOCK
        li s5, {yield_after}            # 0 = spin forever; else yield the pCPU after that many
next:   li s4, 0
acquire:
        li t1, 1
        amoswap.w.aq t2, t1, (s3)       # try to take the lock
        beqz t2, locked
        ld t0, 0(s2)
        addi t0, t0, 1
        sd t0, 0(s2)
        addi s4, s4, 1
        beqz s5, acquire
        blt s4, s5, acquire
        HYPERCALL HC_YIELD              # paravirtual 'pause-loop exit': let the holder run
        j next
locked: li t2, {inside}
1:      addi t2, t2, -1                 # the critical section: 2 instructions per round
        bnez t2, 1b
        ld t0, 0(s1)
        addi t0, t0, 1
        sd t0, 0(s1)
        amoswap.w.rl zero, zero, (s3)   # release
        li t2, {outside}
2:      addi t2, t2, -1                 # work outside the lock
        bnez t2, 2b
        j next
"""


@dataclass(frozen=True)
class LockResult:
    """Two vCPUs of one guest sharing a spin lock, next to a CPU-bound neighbour.

    :ivar useful_fraction: of the guest's CPU time, the part spent in or between critical sections
        (the rest is spinning on a lock whose holder is not running).
    """

    yield_after: int
    sections: int
    spins: int
    guest_busy_ms: float
    useful_fraction: float
    slices: tuple[Slice, ...]


def lock_holder_preemption(yield_after: int = 0, *, duration_ms: float = 100, inside: int = 3000,
                           outside: int = 1000, scheduler: str = "round-robin") -> LockResult:
    """Run the spin-lock guest (2 vCPUs) and a compute guest on one pCPU.

    :param yield_after: spins before the guest yields (0 = never: plain spinning).
    :param inside: loop rounds inside the critical section (2 instructions each); ``outside`` likewise.
    """
    from vlab.toyvmm import INSNS_PER_MS, Machine
    from vlab.toyvmm.programs import kernel_program

    source = _SPINLOCK_GUEST.format(yield_after=yield_after, inside=inside, outside=outside)
    program = kernel_program(source, name="spinlock.S")
    with Machine(scheduler=scheduler) as machine:
        guest = machine.add_guest(program, name="locky", vcpus=2)
        machine.add_guest("compute", name="neighbour")
        trace = machine.run(ms=duration_ms)
        sections = guest.mailbox(0) + guest.mailbox(1)
        spins = sum(guest.memory.read_u64(0x8000_F300 + 8 * hart) or 0 for hart in (0, 1))
        busy = trace.busy_time().get("locky", 0)
        # instructions per completed section: the two loops plus ~10 of bookkeeping
        useful = min(1.0, sections * (2 * (inside + outside) + 10) / busy) if busy else 0.0
        # one colour per vCPU of the lock guest, to see which one holds the pCPU while the other spins
        slices = tuple(replace(s, guest=str(s.lane)) if s.guest == "locky" else s for s in trace.in_ms())
        return LockResult(yield_after, sections, spins, busy / INSNS_PER_MS, useful, slices)


# ================================================================ placement across hosts

#: the three dimensions of a VM's demand, in the order of :class:`Demand`'s fields
RESOURCES = ("cpu", "mem", "disk")


@dataclass(frozen=True)
class Demand:
    """A resource vector: CPU cores, memory (GiB) and disk (GB).

    Used both for what a VM needs and for what a host has (capacity) or has left (free).
    Supports ``+`` and ``-`` component-wise, and :meth:`fits_in`.
    """

    cpu: float
    mem: float
    disk: float

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.cpu + other.cpu, self.mem + other.mem, self.disk + other.disk)

    def __sub__(self, other: Demand) -> Demand:
        return Demand(self.cpu - other.cpu, self.mem - other.mem, self.disk - other.disk)

    def fits_in(self, free: Demand) -> bool:
        """Whether this demand fits in ``free`` in *every* dimension (a VM cannot borrow memory with CPU)."""
        return all(need <= have + 1e-9 for need, have in zip(self.as_tuple(), free.as_tuple(), strict=True))

    def as_tuple(self) -> tuple[float, float, float]:
        """``(cpu, mem, disk)``."""
        return (self.cpu, self.mem, self.disk)

    def shares_of(self, capacity: Demand) -> tuple[float, float, float]:
        """Each dimension as a fraction of ``capacity`` (``Demand(8, 32, 100).shares_of(host)``)."""
        return tuple(  # type: ignore[return-value]
            mine / whole for mine, whole in zip(self.as_tuple(), capacity.as_tuple(), strict=True)
        )

    def __str__(self) -> str:
        return f"{self.cpu:g} CPU / {self.mem:g} GiB / {self.disk:g} GB"


ZERO = Demand(0, 0, 0)

#: the hosts of the placement exercise: all identical
HOST_CAPACITY = Demand(cpu=32, mem=128, disk=2000)


@dataclass(frozen=True)
class VMSpec:
    """A VM to place: a name and its demand."""

    name: str
    demand: Demand


# Profiles make the dimensions pull against each other: a list of only "balanced" VMs would let any
# single-dimension rule look fine.
_PROFILES = {
    "cpu-heavy": ((8, 16), (8, 24), (50, 200)),
    "mem-heavy": ((1, 4), (32, 64), (50, 300)),
    "disk-heavy": ((1, 4), (4, 16), (500, 900)),
    "balanced": ((2, 8), (8, 32), (100, 400)),
}


def seeded_vms(seed: int, count: int = 24) -> list[VMSpec]:
    """The lab's VM list for a seed: a mix of CPU-, memory-, disk-heavy and balanced VMs, in arrival order.

    :param seed: the student's seed (same seed, same list).
    :param count: how many VMs.
    """
    if count < 1:
        raise VlabError("a VM list needs at least one VM", field="count", value=count, fix="e.g. count=24")
    rng = random.Random(seed)
    vms = []
    for i in range(count):
        profile = rng.choice(sorted(_PROFILES))
        (c0, c1), (m0, m1), (d0, d1) = _PROFILES[profile]
        demand = Demand(rng.randint(c0, c1), rng.randint(m0, m1) // 2 * 2 or 1, rng.randint(d0, d1) // 10 * 10)
        vms.append(VMSpec(f"vm{i:02d}-{profile.split('-')[0]}", demand))
    return vms


def as_vms(demands: Sequence[Sequence[float]]) -> list[VMSpec]:
    """VMs ``vm0``, ``vm1``, … from plain ``(cpu, mem, disk)`` demands (what crosses into the grader)."""
    return [VMSpec(f"vm{i}", Demand(*(float(x) for x in d))) for i, d in enumerate(demands)]


def placement_problems(vms: Sequence[VMSpec], capacity: Demand, assignment: Sequence[int]) -> list[str]:
    """Why a placement is invalid (an empty list means it is valid).

    :param assignment: for each VM of ``vms`` (same order), the index of its host (0, 1, 2, …).
    """
    if len(assignment) != len(vms):
        return [f"the assignment has {len(assignment)} entries for {len(vms)} VMs: give one host index per VM"]
    problems = []
    load: dict[int, Demand] = {}
    for vm, host in zip(vms, assignment, strict=True):
        if not isinstance(host, int) or isinstance(host, bool) or host < 0:
            problems.append(f"{vm.name}: host index {host!r} is not an integer ≥ 0")
            continue
        load[host] = load.get(host, ZERO) + vm.demand
    for host, used in sorted(load.items()):
        if not used.fits_in(capacity):
            problems.append(f"host {host} is overcommitted: {used} placed on {capacity}")
    return problems


def hosts_used(assignment: Sequence[int]) -> int:
    """How many distinct hosts a placement uses."""
    return len(set(assignment))


def utilisation(vms: Sequence[VMSpec], capacity: Demand, assignment: Sequence[int]) -> dict[int, Demand]:
    """Per host, the fraction of each resource in use (as a :class:`Demand` of fractions)."""
    load: dict[int, Demand] = {}
    for vm, host in zip(vms, assignment, strict=True):
        load[host] = load.get(host, ZERO) + vm.demand
    return {host: Demand(*used.shares_of(capacity)) for host, used in sorted(load.items())}


def placement_table(vms: Sequence[VMSpec], capacity: Demand, assignment: Sequence[int]) -> str:
    """A text table: per host, its VMs and how full each resource is."""
    lines = [f"{'host':>4}  {'VMs':>3}  {'CPU':>5}  {'mem':>5}  {'disk':>5}"]
    for host, used in utilisation(vms, capacity, assignment).items():
        count = sum(1 for h in assignment if h == host)
        lines.append(f"{host:>4}  {count:>3}  {used.cpu:>5.0%}  {used.mem:>5.0%}  {used.disk:>5.0%}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the article's model


@dataclass(frozen=True)
class AllocationStep:
    """One step of allocating a single VM on a single host: which resource, and what is left after it."""

    resource: str
    allocated: float
    free_after: Demand


def replay_article_example(
    host: Demand = Demand(4, 8, 200),
    need: Demand = Demand(2, 4, 100),
    order: Sequence[str] = ("disk", "mem", "cpu"),
) -> list[AllocationStep]:
    """Allocate ``need`` on ``host`` one resource at a time in ``order``, recording what is left.

    The defaults are the reference article's worked example (§4.3.1: a 2 CPU / 4 GB / 100 GB VM on
    a 4 CPU / 8 GB / 200 GB host, disk first, then memory; the article prints C = 4). Lab 04 asks
    what the steps show, so this docstring does not say.
    """
    unknown = [r for r in order if r not in RESOURCES]
    if unknown or sorted(order) != sorted(RESOURCES):
        raise VlabError("order must name each resource once", field="order", value=list(order),
                        fix=f"a permutation of {RESOURCES}")
    if not need.fits_in(host):
        raise VlabError("the VM does not fit on the host at all", field="need", value=str(need),
                        fix=f"a demand within {host}")
    free = host
    steps = []
    for resource in order:
        amount = getattr(need, resource)
        free = Demand(**{r: getattr(free, r) - (amount if r == resource else 0) for r in RESOURCES})
        steps.append(AllocationStep(resource, amount, free))
    return steps


def article_objective(free: Demand, capacity: Demand) -> float:
    """The article's objective: the *smallest* unused fraction, min(unused CPU, unused mem, unused disk).

    Fractions of capacity, so that cores, GiB and GB can be compared at all (the article mixes units).
    Minimising it rewards filling *one* dimension, whatever the others waste.
    """
    return min(free.shares_of(capacity))


def objective_counterexample(capacity: Demand = HOST_CAPACITY) -> list[tuple[str, float, float]]:
    """Two loads of one host, scored by the article's objective and by mean utilisation.

    :returns: ``(description, article objective (lower is 'better'), mean utilisation)`` per load.
        The article's objective prefers the first, which leaves 97 % of the memory and disk idle.
    """
    loads = {
        "all CPUs taken by one CPU-hungry VM, memory and disk idle": Demand(capacity.cpu, capacity.mem * 0.03,
                                                                          capacity.disk * 0.03),
        "three balanced VMs: 85 % of every resource in use": Demand(capacity.cpu * 0.85, capacity.mem * 0.85,
                                                                  capacity.disk * 0.85),
    }
    rows = []
    for text, used in loads.items():
        free = capacity - used
        rows.append((text, article_objective(free, capacity), sum(used.shares_of(capacity)) / len(RESOURCES)))
    return rows


def article_greedy(vms: Sequence[VMSpec], capacity: Demand) -> list[int]:
    """Place VMs in arrival order the way the article's objective suggests.

    Each VM goes to the open host where, after placing it, the article's objective
    (:func:`article_objective`, the smallest unused fraction) is lowest — ties to the lowest index;
    a new host is opened when none fits. A reasonable-sounding rule that looks at one dimension only.

    :returns: the host index of each VM, in the order of ``vms``.
    """
    free: list[Demand] = []
    assignment = []
    for vm in vms:
        if not vm.demand.fits_in(capacity):
            raise VlabError(f"{vm.name} is larger than a whole host", field="vms", value=str(vm.demand),
                            fix=f"every VM must fit in {capacity}")
        candidates = [(article_objective(f - vm.demand, capacity), i) for i, f in enumerate(free)
                      if vm.demand.fits_in(f)]
        if candidates:
            _, host = min(candidates)
        else:
            free.append(capacity)
            host = len(free) - 1
        free[host] = free[host] - vm.demand
        assignment.append(host)
    return assignment


def lower_bound_hint(vms: Sequence[VMSpec], capacity: Demand) -> list[float]:
    """Total demand per resource, in hosts' worth (not rounded): the raw material of a lower bound."""
    total = sum((vm.demand for vm in vms), ZERO)
    return [round(x, 3) for x in total.shares_of(capacity)]


# ================================================================ real vCPU threads and a CPU quota


def vcpu_threads(vm: VM) -> dict[int, str]:
    """QEMU's host threads: thread id → name (``CPU 0/TCG`` or ``CPU 0/KVM`` are the vCPUs)."""
    assert vm.pid is not None
    threads = {}
    for task in sorted(Path(f"/proc/{vm.pid}/task").iterdir(), key=lambda p: int(p.name)):
        with contextlib.suppress(OSError):
            threads[int(task.name)] = (task / "comm").read_text().strip()
    return threads


def cpu_quota_support() -> tuple[bool, str]:
    """Whether this host lets us put threads in a cgroup with a CPU quota, and a sentence saying why.

    Needs the ``cpu`` controller writable in cgroup v1, or delegated in cgroup v2 (threaded mode is
    needed there to move single threads, so v2 support also requires ``cgroup.type`` to accept
    ``threaded``; vlab tries and reports).
    """
    support = detect_cgroups()
    place = support.where("cpu")
    if place is None:
        return False, f"no writable cgroup with the cpu controller here ({support.describe()})"
    version, path = place
    return True, f"cgroup v{version} cpu controller at {path}"


@contextlib.contextmanager
def throttled_vcpus(vm: VM, fraction: float, name: str = "vlab-lab04") -> Iterator[Cgroup]:
    """Move the VM's vCPU threads into a child cgroup limited to ``fraction`` of one CPU.

    Only the vCPU threads are limited (cgroup v1 places single threads; on v2 the group becomes a
    threaded one). On exit the threads go back to their previous group and the child group is
    removed, even if the body raised.

    :raises VlabError: where the host has no usable cpu controller (check :func:`cpu_quota_support`).
    """
    if not 0 < fraction <= 1:
        raise VlabError("the quota is a fraction of one CPU", field="fraction", value=fraction,
                        fix="e.g. 0.25 for a quarter of a CPU")
    group = Cgroup(name, ("cpu",))
    threads = [cpu.thread_id for cpu in vm.vcpus()]
    try:
        group.set_cpu_quota(fraction)
        for thread in threads:
            group.add_thread(thread)
        yield group
    finally:
        group.release(threads)
        group.remove()


@dataclass(frozen=True)
class LoopRate:
    """A busy loop measured inside the guest: iterations, the guest's own elapsed time, the rate."""

    iterations: int
    guest_seconds: float

    @property
    def per_second(self) -> float:
        """Iterations per guest second."""
        return self.iterations / self.guest_seconds if self.guest_seconds > 0 else math.inf


def guest_loop_rate(vm: VM, iterations: int = 20_000) -> LoopRate:
    """Run a shell busy loop in the guest and time it with the guest's clock (``/proc/uptime``, 10 ms ticks).

    The guest's clock keeps running while its vCPU thread is throttled on the host, so a throttled
    guest sees its own loop slow down.
    """
    script = (f"read s _ </proc/uptime; i=0; while [ $i -lt {iterations} ]; do i=$((i+1)); done; "
              "read e _ </proc/uptime; echo LOOP $s $e")
    result = vm.console.run(script, timeout=120)
    for line in result.output.splitlines():
        if line.startswith("LOOP "):
            _, start, end = line.split()
            return LoopRate(iterations, float(end) - float(start))
    raise VlabError("the guest loop printed no timing line", field="guest output", value=result.output[-200:],
                    fix="check the guest shell answers: vm.console.run('echo hi')")


# ================================================================ display


#: Display a plotly figure (in a notebook) or its text summary (elsewhere): :func:`vlab.plots.show`.
show = plots.show


