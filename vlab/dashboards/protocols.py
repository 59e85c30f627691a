"""What the dashboards need from the objects they watch.

The panels are written against these small protocols rather than against
:class:`vlab.qemu.VM` or the toy VMM's machine, so that each side can evolve,
and so that the panel wiring can be tested with a tiny in-process object.

Threading: when a panel's live updates are on (:meth:`Panel.start_updates`),
the *reading* methods (``state``, ``vcpu_times``, ``rss_bytes``,
``console_tail``, ``exit_counts``) are called from a background thread, at most
every ``interval`` seconds. They must be safe to call from a thread other than
the notebook's and must not need the notebook's asyncio event loop (a blocking
call on their own connection is fine). The *control* methods (``start``,
``pause``, …) run on a worker thread the button starts, so a long ``stop()`` never blocks the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

__all__ = ["ACTIVE_STATES", "CONSOLE_STATES", "SAMPLED_STATES", "ClockedVM", "ControllableVM", "ExitCounter",
           "StateLike", "state_name"]

#: VM states in which the guest is up
ACTIVE_STATES = frozenset({"running", "paused"})
#: VM states in which a QEMU process may exist, so its vCPU times and RSS are read (while booting: if they can be)
SAMPLED_STATES = ACTIVE_STATES | {"starting"}
#: VM states in which the serial console can be read (booting output included)
CONSOLE_STATES = ACTIVE_STATES | {"starting"}


@runtime_checkable
class StateLike(Protocol):
    """A state with a string ``value``, such as a ``str``-valued :class:`enum.Enum` member."""

    @property
    def value(self) -> str: ...


@runtime_checkable
class ControllableVM(Protocol):
    """A VM that :class:`~vlab.dashboards.VMPanel` can drive and watch.

    * ``state`` — the current state: an enum member whose ``value`` (or a plain string) is one
      of ``"created"``, ``"starting"``, ``"running"``, ``"paused"``, ``"stopping"``, ``"stopped"``,
      ``"failed"`` (other values are shown as they are, with every button enabled).
    * ``start()``, ``pause()``, ``resume()``, ``stop()`` — the transitions; they may
      raise :class:`vlab.errors.StateError` (shown in the panel, not raised).
    * ``vcpu_times()`` — host CPU seconds consumed so far by each vCPU thread,
      keyed by vCPU index (cumulative, like ``/proc/<pid>/task/<tid>/stat``).
    * ``rss_bytes()`` — the QEMU process's resident memory in bytes.
    * ``console_tail(n)`` — the last *n* lines of the serial console as one string.

    ``vcpu_times()``, ``rss_bytes()`` and ``console_tail()`` are only called in :data:`SAMPLED_STATES`
    (in ``starting`` they may raise until QEMU is up: that sample is skipped); ``state`` is read in any state.
    The control methods run on a worker thread of the panel, one at a time, while reads go on.
    An optional ``name`` attribute titles the panel.
    """

    @property
    def state(self) -> StateLike | str: ...

    def start(self) -> object: ...

    def pause(self) -> object: ...

    def resume(self) -> object: ...

    def stop(self) -> object: ...

    def vcpu_times(self) -> Mapping[int, float]: ...

    def rss_bytes(self) -> int: ...

    def console_tail(self, n: int) -> str: ...


@runtime_checkable
class ClockedVM(Protocol):
    """A VM whose guest clock can be read: :class:`~vlab.dashboards.VMPanel` then draws how far the guest
    has fallen behind real time (it stops while paused; a busy guest stays on time).

    ``guest_clock()`` returns the guest's clock in seconds (any origin, whole seconds will do); it is
    called in ``running`` and ``paused`` only.
    """

    def guest_clock(self) -> float: ...


@runtime_checkable
class ExitCounter(Protocol):
    """A machine that counts its VM exits: :class:`~vlab.dashboards.ExitMonitor` watches it.

    ``exit_counts()`` returns the cumulative number of exits per reason
    (``{"csr": 120, "wfi": 4, "mmio": 37, "ecall": 9}``); the reasons are the
    machine's own words.
    """

    def exit_counts(self) -> Mapping[str, int]: ...


def state_name(state: object) -> str:
    """The plain string of a state: ``state.value`` for an enum member, ``str(state)`` otherwise."""
    value = getattr(state, "value", state)
    return str(value)
