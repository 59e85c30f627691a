"""Dashboards for the labs: ipywidgets panels with plotly charts that update live.

Architecture: every panel is a :class:`~vlab.dashboards.panel.Panel` — one
widget box, a throttled :meth:`~Panel.refresh` that re-reads the watched object
and redraws in place, optional live updates from a daemon thread
(:meth:`~Panel.start_updates`, stopped by :meth:`~Panel.close`), and a
plain-text form (``str(panel)``, ``text/plain``) for nbval and terminals.
Panels watch objects through the small protocols in
:mod:`vlab.dashboards.protocols`, never through concrete classes:

* :class:`VMPanel` — a :class:`ControllableVM` (e.g. :class:`vlab.qemu.VM`):
  buttons, state, host CPU per vCPU, QEMU RSS, console;
* :class:`ExitMonitor` — an :class:`ExitCounter` (a toy-VMM machine): exits per reason;
* :class:`GanttView` — a scheduler trace of :class:`vlab.plots.SliceLike` records;
* :class:`MigrationView` — bytes remaining per pre-copy round.

Figures are built by :mod:`vlab.plots`, so a lab can show the same data as a
static figure (``vlab.plots.show``) or as a live panel.
"""

from __future__ import annotations

from vlab.dashboards.exit_monitor import ExitMonitor
from vlab.dashboards.gantt import GanttView
from vlab.dashboards.migration import MigrationView
from vlab.dashboards.panel import Panel
from vlab.dashboards.protocols import ClockedVM, ControllableVM, ExitCounter, StateLike
from vlab.dashboards.vm_panel import VMPanel

__all__ = ["ClockedVM", "ControllableVM", "ExitCounter", "ExitMonitor", "GanttView", "MigrationView", "Panel",
           "StateLike", "VMPanel"]
