"""A toy trap-and-emulate hypervisor on Unicorn, small enough to read in an afternoon.

**Trap-and-emulate.** The guest kernel is written as if it ran in RISC-V supervisor mode: it
writes ``stvec``, ``satp``, ``stimecmp``, executes ``wfi`` and ``sret``. The VMM really runs it
in *user* mode (``UC_RISCV_REG_PRIV = 0``), where each of those privileged instructions traps
(Unicorn intno 2; ``ecall`` is intno 8). The VMM decodes the trapping instruction, emulates it
against the vCPU's *virtual* CSRs and resumes the guest -- which cannot tell the difference
(Popek & Goldberg's equivalence), except in time.

**Why RISC-V, not x86.** In Unicorn 2.1.4, RISC-V U-mode traps every CSR access and ``wfi``
cleanly at ≈ 370 k traps/s. On x86 at CPL3, ``pushf``/``popf`` do not trap (the textbook
non-virtualizable case, :func:`~vlab.toyvmm.nonvirt.x86_popf_at_cpl3`) and #GP traps need a
context-restore workaround (unicorn #1883) and run at ≈ 22 k/s. RISC-V in Unicorn still has one
leak, ``rdcycle`` -- lab 02's case for paravirtualization and scan-and-patch (:mod:`.nonvirt`).

**Unicorn quirks handled here** (all measured with Unicorn 2.1.4): in the interrupt hook the PC is
already past the trapping instruction and no architectural trap entry happened (``sepc``/``scause``
untouched), so the VMM decodes the instruction itself and performs trap entry in software;
``emu_stop()`` takes effect at the end of a translation block; returning True from a
write-protection hook after ``mem_protect`` silently drops the store (unicorn #2368), so write
protection (copy-on-write) is done with TLB permissions in the TLB-fill hook instead; hooks added
after code was translated may not fire (unicorn #2200), so all are installed at guest creation;
``emu_start(timeout=)`` is wall-clock, so slices use ``count=`` (virtual time = instructions);
Unicorn does not report how far into a ``count`` it got when a hook stops early, so the VMM burns
the remainder in a VMM-owned loop and reads the exact figure back (:mod:`.machine`).

**Modules, and the concept each teaches.**

=========================  ===========================================================
:mod:`.machine`            the VMM: hooks turn traps into exits; scheduling loop; virtual time
:mod:`.exits`              exit reasons, the exit object, the replaceable handler table
:mod:`.handlers`           trap-and-emulate itself: one default handler per exit reason
:mod:`.vcpu`               virtual privileged state; trap entry and ``sret`` done in software
:mod:`.isa`                decoding the trapping instruction (capstone for display)
:mod:`.devices`            MMIO device emulation (UART) and paravirtual hypercalls
:mod:`.memory`             guest-physical memory, isolation check, ballooning, sharing + COW
:mod:`.mmu`                guest page tables: shadow paging vs nested (2-D) walks
:mod:`.sched`              vCPU scheduling: round-robin, Xen credit, lottery (proportional share)
:mod:`.trace`              the schedule as data, and its Gantt chart
:mod:`.nonvirt`            a sensitive-but-unprivileged instruction; paravirt and patching fixes
:mod:`.asm`, :mod:`.programs`  guest code: Debian's RISC-V binutils, the programs in vm-images/
=========================  ===========================================================

Quick start::

    from vlab.toyvmm import Machine, ExitReason
    m = Machine(scheduler="credit")
    g = m.add_guest("hello")
    m.run(ms=10)
    print(g.uart.text, g.exits)
"""

from __future__ import annotations

from vlab.toyvmm.asm import RAM_BASE, assemble
from vlab.toyvmm.exits import Exit, ExitHandler, ExitReason, ExitRecord, HandlerTable
from vlab.toyvmm.machine import MAILBOX, Guest, GuestState, Machine, Violation
from vlab.toyvmm.memory import MemoryReport
from vlab.toyvmm.mmu import PagingMode, PagingStats, nested_walk_refs
from vlab.toyvmm.nonvirt import patch_counter_reads, x86_popf_at_cpl3
from vlab.toyvmm.programs import PROGRAMS, build_all, load_program
from vlab.toyvmm.sched import INSNS_PER_MS, Credit, Lottery, RoundRobin, Scheduler, ms
from vlab.toyvmm.trace import Slice, Trace
from vlab.toyvmm.vcpu import VCPU, Mode, VCPUState

__all__ = [
    "INSNS_PER_MS", "MAILBOX", "PROGRAMS", "RAM_BASE", "VCPU", "Credit", "Exit", "ExitHandler",
    "ExitReason", "ExitRecord", "Guest", "GuestState", "HandlerTable", "Lottery", "Machine",
    "MemoryReport", "Mode", "PagingMode", "PagingStats", "RoundRobin", "Scheduler", "Slice", "Trace",
    "VCPUState", "Violation", "assemble", "build_all", "load_program", "ms", "nested_walk_refs",
    "patch_counter_reads", "x86_popf_at_cpl3",
]
