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
leak: ``rdcycle``/``rdinstret`` run natively, so the VMM makes them trap itself with code hooks
(:class:`.engine.CounterTraps`); ``Machine(leak_host_counters=True)`` keeps the leak -- lab 02's
case for paravirtualization and scan-and-patch (:mod:`.nonvirt`).

**One trap, guest -> handler -> guest, in four hops** (a ``csrw sstatus, a0`` in the guest kernel):

1. :meth:`.engine.Engine._on_interrupt` -- Unicorn reports intno 2 (illegal in real U-mode); the
   engine fetches the word, decodes it (:func:`.engine.classify`) and makes an :class:`Exit`
   ``CSR_WRITE`` with the vCPU, PC and decoded instruction.
2. :meth:`.machine.Machine.dispatch` -- counts and logs the exit, looks up the handler for its
   reason in ``machine.handlers`` (a lab may have replaced it).
3. :func:`.handlers.csr_access` -- trap-and-emulate: reads the *virtual* CSR into ``rd`` and
   writes the new value; what it needs of the VMM it asks through ``exit.vmm``
   (:class:`.exits.Services`: ``now``, ``request_stop``, ``flush_address_space``...).
4. :meth:`.vcpu.VCPU.csr_write` -- keeps the writable bits (WARL); if the write enabled a pending
   interrupt, :meth:`~.vcpu.VCPU.take_interrupt` does the trap entry in software
   (``sepc``/``scause``/``sstatus``, PC = ``stvec``).

The handler returns, the hook returns, and Unicorn resumes the guest at its PC: past the ``csrw``,
or at ``stvec``. A page fault takes the same hops from :meth:`.engine.Engine._on_error` (the
TLB-fill hook asked :meth:`.mmu.MMU.fill`, which refused); a shadow-paging miss is a
``SHADOW_FILL`` exit the engine dispatches from its TLB-fill hook before asking the MMU again. A
counter read (``rdcycle``), which Unicorn would run, takes them from
:meth:`.engine.Engine._on_counter_read`, the code hook on that instruction, called before it runs.

**Unicorn quirks** (2.1.4), all in :mod:`.engine`: in the interrupt hook the PC is already past
the trapping instruction and no trap entry happened; ``emu_stop()`` takes effect only at the end
of a translation block, and ``count`` does not say how far it got, hence the *sink*; returning
True from a write-protection hook after ``mem_protect`` drops the store (unicorn #2368), so
copy-on-write uses TLB permissions; hooks added after translation may not fire (unicorn #2200),
so all are installed at guest creation -- except the counter-read code hooks, placed when a page is
first fetched, before its code is translated; ``emu_start``'s ``until`` would stop a guest running
code there, so runs end by ``count`` alone; ``rdcycle``/``rdinstret`` (and the hpm counters) run
natively in U-mode whatever ``mcounteren`` says, hence those hooks.

**Model** (checked against QEMU's riscv64 hart by ``tests/toyvmm/rvtests.py``): an rv64imac hart
in S-mode with Sv39/Sv48, Sstc (``stimecmp``), supervisor software and timer interrupts, a 16550
UART at 0x10000000 and hypercalls. The MMU sets the A and D bits in the guest's PTEs itself (as
QEMU does; no Svade), write-protecting a clean page until its first store. ``sstatus.UXL`` = 2,
``FS`` = 0 (no F/D). ``cycle``, ``instret`` and ``time`` read virtual time, ``hpmcounter3..31``
read 0; S-mode may read them all, U-mode each only while its ``scounteren`` bit is set.

**Modules, and the concept each teaches.**

=========================  ===========================================================
:mod:`.machine`            the VMM: guests, the run loop in virtual time, exit dispatch
:mod:`.engine`             what exists because the CPU is Unicorn: hooks, fast registers, the sink
:mod:`.exits`              exit reasons, the exit object, the handler table, the services protocol
:mod:`.handlers`           trap-and-emulate itself: one default handler per exit reason
:mod:`.vcpu`               virtual privileged state; trap entry, interrupts and ``sret`` in software
:mod:`.isa`                decoding the trapping instruction (capstone for display)
:mod:`.devices`            MMIO device emulation (UART) and paravirtual hypercalls
:mod:`.memory`             guest-physical memory, isolation check, ballooning, sharing + COW
:mod:`.mmu`                guest page tables: shadow paging vs nested (2-D) walks, A/D bits
:mod:`.sched`              vCPU scheduling: round-robin, Xen credit, lottery (proportional share)
:mod:`.trace`              the schedule as data (:func:`vlab.plots.gantt_chart` draws it)
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
from vlab.toyvmm.mmu import PagingMode, PagingStats
from vlab.toyvmm.nonvirt import patch_counter_reads, x86_popf_at_cpl3
from vlab.toyvmm.programs import PROGRAMS, build_all, load_program
from vlab.toyvmm.sched import INSNS_PER_MS, Credit, Lottery, RoundRobin, Scheduler, ms
from vlab.toyvmm.trace import Trace
from vlab.toyvmm.vcpu import VCPU, Mode, VCPUState

__all__ = [
    "INSNS_PER_MS", "MAILBOX", "PROGRAMS", "RAM_BASE", "VCPU", "Credit", "Exit", "ExitHandler",
    "ExitReason", "ExitRecord", "Guest", "GuestState", "HandlerTable", "Lottery", "Machine",
    "MemoryReport", "Mode", "PagingMode", "PagingStats", "RoundRobin", "Scheduler", "Trace",
    "VCPUState", "Violation", "assemble", "build_all", "load_program", "ms",
    "patch_counter_reads", "x86_popf_at_cpl3",
]
