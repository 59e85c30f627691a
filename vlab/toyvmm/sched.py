"""vCPU schedulers: who runs next on the one physical CPU, and for how long (virtual time).

Virtual time is counted in guest instructions; :data:`INSNS_PER_MS` of them make a virtual
millisecond. A scheduler implements :class:`Scheduler` -- ``pick`` the next vCPU and its slice,
be told how much it ``charge``\\ d, when a blocked vCPU ``wake``\\ s, and whether a woken vCPU
``preempts`` the running one. Three are provided; a student can plug in a fourth:

* :class:`RoundRobin` -- FIFO, fixed slice.
* :class:`Credit` -- Xen's credit scheduler: weights, caps, 30 ms slices, 10 ms ticks,
  UNDER/OVER/BOOST priorities.
* :class:`Lottery` -- proportional share by lottery (seeded: same seed, same schedule).
"""

from __future__ import annotations

import enum
import random
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from vlab.errors import VlabError

if TYPE_CHECKING:
    from vlab.toyvmm.vcpu import VCPU

__all__ = ["INSNS_PER_MS", "ms", "Scheduler", "RoundRobin", "Credit", "Lottery", "Priority",
           "make_scheduler", "SCHEDULERS"]

#: Virtual instructions per virtual millisecond (a 10-MIPS virtual CPU).
INSNS_PER_MS = 10_000


def ms(value: float) -> int:
    """Virtual milliseconds -> virtual instructions."""
    return int(value * INSNS_PER_MS)


class Scheduler(ABC):
    """The interface the machine drives. Subclasses override :meth:`pick` and what they need."""

    name = "scheduler"

    def __init__(self) -> None:
        self.vcpus: list[VCPU] = []

    def add(self, vcpu: VCPU) -> None:
        """A new vCPU joins (called by :meth:`Machine.add_guest`)."""
        self.vcpus.append(vcpu)

    @abstractmethod
    def pick(self, now: int) -> tuple[VCPU, int] | None:
        """The vCPU to run next and its slice in instructions, or ``None`` to idle."""

    def charge(self, vcpu: VCPU, ran: int, now: int, reason: str) -> None:  # noqa: B027 - optional hook
        """``vcpu`` ran ``ran`` instructions and was descheduled because of ``reason``."""

    def wake(self, vcpu: VCPU, now: int) -> None:  # noqa: B027 - optional hook
        """A blocked vCPU became runnable (its timer fired)."""

    def preempts(self, running: VCPU, woken: VCPU, now: int) -> bool:
        """Should ``woken`` preempt ``running`` right now?"""
        return False

    def idle_until(self, now: int) -> int | None:
        """When idling, the time at which :meth:`pick` may have something (e.g. caps reset)."""
        return None

    def forget(self, old: VCPU, new: VCPU) -> None:  # noqa: B027 - optional hook
        """``old`` was replaced by ``new`` (guest reboot): move any per-vCPU state over."""

    def _rotate(self, vcpu: VCPU) -> None:
        self.vcpus.remove(vcpu)
        self.vcpus.append(vcpu)


class RoundRobin(Scheduler):
    """Each runnable vCPU in turn, for a fixed slice."""

    name = "round-robin"

    def __init__(self, slice_ms: float = 10) -> None:
        super().__init__()
        self.slice = ms(slice_ms)

    def pick(self, now: int) -> tuple[VCPU, int] | None:
        for vcpu in self.vcpus:
            if vcpu.runnable:
                return vcpu, self.slice
        return None

    def charge(self, vcpu: VCPU, ran: int, now: int, reason: str) -> None:
        self._rotate(vcpu)


class Priority(enum.IntEnum):
    """Credit-scheduler priorities (lower runs first)."""

    BOOST = 0
    UNDER = 1
    OVER = 2


class Credit(Scheduler):
    """Xen's credit scheduler (credit1), on one physical CPU, in virtual time.

    Every accounting period (30 ms = 3 ticks) each active vCPU earns credit in proportion to its
    guest's ``weight`` (split among the guest's vCPUs); running burns credit one for one. A vCPU
    with credit left is UNDER, otherwise OVER; UNDER runs first. A vCPU woken by its timer while
    UNDER is BOOSTed: it preempts the running vCPU and runs for at most one tick. A guest with
    ``cap`` (percent of the CPU, 0 = none) is parked once it used its cap in a period, even if
    the CPU would otherwise idle.
    """

    name = "credit"

    def __init__(self, tick_ms: float = 10, ticks_per_slice: int = 3) -> None:
        super().__init__()
        self.tick = ms(tick_ms)
        self.slice = self.tick * ticks_per_slice
        self.period = self.slice
        self.credit: dict[VCPU, int] = {}
        self.priority: dict[VCPU, Priority] = {}
        self.used: dict[str, int] = {}
        self.next_accounting = 0

    def add(self, vcpu: VCPU) -> None:
        super().add(vcpu)
        self.credit[vcpu] = 0
        self.priority[vcpu] = Priority.UNDER

    def forget(self, old: VCPU, new: VCPU) -> None:
        self.credit[new] = self.credit.pop(old, 0)
        self.priority[new] = self.priority.pop(old, Priority.UNDER)

    def _cap_left(self, vcpu: VCPU) -> int | None:
        cap = vcpu.guest.cap
        if not cap:
            return None
        return max(0, self.period * cap // 100 - self.used.get(vcpu.guest.name, 0))

    def _account(self) -> None:
        active = [v for v in self.vcpus if v.state.value != "halted"]
        total_weight = sum(v.guest.weight / len(v.guest.vcpus) for v in active) or 1
        for vcpu in active:
            share = int(self.period * (vcpu.guest.weight / len(vcpu.guest.vcpus)) / total_weight)
            self.credit[vcpu] = min(self.credit[vcpu] + share, share)  # credit does not pile up
            if self.priority[vcpu] != Priority.BOOST:
                self.priority[vcpu] = Priority.UNDER if self.credit[vcpu] > 0 else Priority.OVER
        self.used.clear()

    def pick(self, now: int) -> tuple[VCPU, int] | None:
        while now >= self.next_accounting:
            self._account()
            self.next_accounting += self.period
        candidates = [v for v in self.vcpus if v.runnable and self._cap_left(v) != 0]
        if not candidates:
            return None
        vcpu = min(candidates, key=lambda v: self.priority[v])  # stable: run-queue order
        length = self.tick if self.priority[vcpu] == Priority.BOOST else self.slice
        cap_left = self._cap_left(vcpu)
        if cap_left is not None:
            length = min(length, cap_left)
        return vcpu, min(length, self.next_accounting - now)

    def charge(self, vcpu: VCPU, ran: int, now: int, reason: str) -> None:
        self.credit[vcpu] -= ran
        self.used[vcpu.guest.name] = self.used.get(vcpu.guest.name, 0) + ran
        self.priority[vcpu] = Priority.UNDER if self.credit[vcpu] > 0 else Priority.OVER
        self._rotate(vcpu)  # back to the tail of the run queue (of its priority, via pick's order)

    def wake(self, vcpu: VCPU, now: int) -> None:
        if self.priority[vcpu] == Priority.UNDER:
            self.priority[vcpu] = Priority.BOOST

    def preempts(self, running: VCPU, woken: VCPU, now: int) -> bool:
        return self.priority[woken] < self.priority[running]

    def idle_until(self, now: int) -> int | None:
        return self.next_accounting


class Lottery(Scheduler):
    """Proportional share by lottery: each slice goes to a runnable vCPU with probability
    proportional to its guest's weight (tickets). Seeded, so the schedule is reproducible."""

    name = "lottery"

    def __init__(self, slice_ms: float = 10, seed: int = 0) -> None:
        super().__init__()
        self.slice = ms(slice_ms)
        self.rng = random.Random(seed)

    def pick(self, now: int) -> tuple[VCPU, int] | None:
        runnable = [v for v in self.vcpus if v.runnable]
        if not runnable:
            return None
        tickets = [v.guest.weight / len(v.guest.vcpus) for v in runnable]
        return self.rng.choices(runnable, weights=tickets)[0], self.slice


SCHEDULERS: dict[str, type[Scheduler]] = {"round-robin": RoundRobin, "rr": RoundRobin,
                                          "credit": Credit, "lottery": Lottery}


def make_scheduler(name: str) -> Scheduler:
    """A scheduler by name (``round-robin``/``rr``, ``credit``, ``lottery``) with defaults."""
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise VlabError("unknown scheduler", field="scheduler", value=name,
                        fix=f"use one of: {', '.join(SCHEDULERS)}") from None
