"""Guest page tables: the Sv39/Sv48 walk, and the two ways a VMM can honour them.

The guest kernel builds ordinary RISC-V page tables in its own RAM and writes ``satp`` (which
traps). The VMM must then make the CPU translate guest-virtual addresses through *two* maps:
guest-virtual -> guest-physical (the guest's table) and guest-physical -> host (the p2m).

* **Shadow paging** (:attr:`PagingMode.SHADOW`): the VMM keeps a shadow table (here a dict per
  vCPU) of composed translations. A miss is a hidden fault -- an exit (``SHADOW_FILL``) in which
  the VMM walks the guest table. Every ``satp`` write or ``sfence.vma`` throws the shadow away.
* **Nested paging** (:attr:`PagingMode.NESTED`): hardware does a 2-D walk on every TLB miss and
  the VMM is not involved. Each of the guest's *n* page-table reads is itself a guest-physical
  address that must go through the *m*-level nested table, and so is the data's final address:
  one miss costs far more than *n* memory references (lab 03 has the student count them; a lab
  may install its own counter of a walk's references as :attr:`MMU.nested_walk`).

Unicorn runs in its "virtual TLB" mode: on every TLB miss it calls the VMM's TLB-fill hook, which
is where both strategies live (their costs are counted, not timed).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from unicorn import UC_MEM_FETCH, UC_MEM_WRITE, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from vlab.toyvmm.devices import UART_BASE
from vlab.toyvmm.isa import CSR
from vlab.toyvmm.memory import PAGE, POOL_BASE, GuestMemory
from vlab.toyvmm.vcpu import SSTATUS_MXR, SSTATUS_SUM, Mode

if TYPE_CHECKING:
    from vlab.toyvmm.vcpu import VCPU

__all__ = ["MMU", "NEEDS_SHADOW_FILL", "NestedWalkCounter", "PagingMode", "PagingStats", "Walk", "walk",
           "PTE_V", "PTE_R", "PTE_W", "PTE_X", "PTE_U", "PTE_A", "PTE_D"]

PTE_V, PTE_R, PTE_W, PTE_X, PTE_U, PTE_A, PTE_D = 1, 2, 4, 8, 16, 64, 128
_PPN_MASK = (1 << 44) - 1
_RESERVED = ((1 << 10) - 1) << 54  # bits 54-63: no Svpbmt/Svnapot here, so a set bit is a page fault
_LEVELS = {8: 3, 9: 4}  # satp.MODE -> levels (Sv39, Sv48)
_ACCESS = {UC_MEM_FETCH: "fetch", UC_MEM_WRITE: "write"}
_NEED = {"read": PTE_R, "write": PTE_W, "fetch": PTE_X}


class _NeedsShadowFill:
    def __repr__(self) -> str:
        return "NEEDS_SHADOW_FILL"


#: What :meth:`MMU.fill` answers on a shadow-table miss: the engine dispatches a ``SHADOW_FILL``
#: exit (the VMM walks the guest table) and calls ``fill`` again.
NEEDS_SHADOW_FILL = _NeedsShadowFill()


#: A lab's 2-D walk (lab 03): ``(vcpu, satp, va) -> memory references`` of nested paging's walk for ``va``.
NestedWalkCounter = Callable[["VCPU", int, int], int]


class PagingMode(enum.Enum):
    SHADOW = "shadow"
    NESTED = "nested"


class Walk(NamedTuple):
    """Result of walking the guest's page table for one virtual address.

    :ivar gpa: guest-physical address, or ``None`` on a fault.
    :ivar flags: the leaf PTE's bits V/R/W/X/U/G/A/D.
    :ivar pte_reads: how many page-table entries were read (the *n* of the 2-D walk).
    :ivar fault: ``""``, ``"page"`` (the guest's table forbids it) or ``"access"`` (the table
        itself points outside guest RAM).
    :ivar pte_gpa: guest-physical address of the leaf PTE (where A/D are set), or ``None``.
    """

    gpa: int | None
    flags: int
    pte_reads: int
    fault: str
    pte_gpa: int | None = None


def walk(memory: GuestMemory, satp: int, va: int) -> Walk:
    """Walk the guest's Sv39/Sv48 table rooted at ``satp`` (the A/D bits are the caller's: :meth:`MMU.fill`)."""
    levels = _LEVELS.get(satp >> 60, 0)
    bits = 12 + 9 * levels
    if levels == 0 or (va >> (bits - 1)) not in (0, (1 << (65 - bits)) - 1):
        return Walk(None, 0, 0, "page")  # not a canonical (sign-extended) address
    table = (satp & _PPN_MASK) << 12
    for level in range(levels - 1, -1, -1):
        shift = 12 + 9 * level
        pte_gpa = table + ((va >> shift) & 511) * 8
        pte = memory.read_u64(pte_gpa)
        reads = levels - level
        if pte is None:
            return Walk(None, 0, reads, "access")
        if not pte & PTE_V or (pte & PTE_W and not pte & PTE_R) or pte & _RESERVED:
            return Walk(None, 0, reads, "page")
        ppn = (pte >> 10) & _PPN_MASK
        if pte & (PTE_R | PTE_X):
            if ppn & ((1 << (9 * level)) - 1):
                return Walk(None, 0, reads, "page")  # misaligned superpage
            return Walk((ppn << 12) | (va & ((1 << shift) - 1)), pte & 0xFF, reads, "", pte_gpa)
        table = ppn << 12
    return Walk(None, 0, levels, "page")


def permitted(flags: int, user: bool, status: int) -> int:
    """Unicorn permissions a leaf PTE grants the current mode: the U bit against the mode (S-mode
    reaches U pages only with ``sstatus.SUM``, and never executes them), ``MXR`` (execute-only
    pages readable), and write only once the page is dirty (so the first store comes back to set D)."""
    if flags & PTE_U:
        perms = UC_PROT_ALL if user else (UC_PROT_READ | UC_PROT_WRITE if status & SSTATUS_SUM else 0)
    else:
        perms = 0 if user else UC_PROT_ALL
    readable = flags & PTE_R or (status & SSTATUS_MXR and flags & PTE_X)
    return perms & ((UC_PROT_READ if readable else 0) | (UC_PROT_WRITE if flags & PTE_W and flags & PTE_D else 0)
                    | (UC_PROT_EXEC if flags & PTE_X else 0))


_KIND_PROT = {"read": UC_PROT_READ, "write": UC_PROT_WRITE, "fetch": UC_PROT_EXEC}


@dataclass
class PagingStats:
    """Counters lab 03 compares between the two strategies (per machine)."""

    tlb_fills: int = 0        #: Unicorn TLB misses served by the fill hook
    shadow_fills: int = 0     #: shadow: hidden faults that walked the guest table (exits)
    shadow_flushes: int = 0   #: shadow: satp writes / sfence.vma that dropped the shadow table
    guest_pte_reads: int = 0  #: page-table entries of the guest read by a walk
    nested_refs: int = 0      #: nested: memory references of the 2-D walks
    nested_walks: int = 0     #: nested: 2-D walks performed


class MMU:
    """What the TLB-fill hook does on every TLB miss: guest table (shadow or nested), then the
    p2m with its isolation check, then copy-on-write. Returns False to make the access fault
    (the reason waits in ``vcpu.pending_fault`` for the machine to deliver)."""

    def __init__(self, mode: PagingMode, nested_levels: int = 3) -> None:
        self.mode, self.nested_levels = mode, nested_levels
        self.stats = PagingStats()
        self.cow_copies = 0
        #: counts each nested walk's memory references instead of the VMM (None: the VMM's own count)
        self.nested_walk: NestedWalkCounter | None = None

    @staticmethod
    def kind(access: int) -> str:
        """Unicorn's access type as ``"read"``, ``"write"`` or ``"fetch"``."""
        return _ACCESS.get(access, "read")

    def fill(self, vcpu: VCPU, va: int, access: int, entry: Any, *,
             after_shadow_fill: bool = False) -> bool | _NeedsShadowFill:
        """Fill Unicorn's TLB ``entry`` for ``va``: True, False (the fault waits in
        ``vcpu.pending_fault``), or :data:`NEEDS_SHADOW_FILL`."""
        if not after_shadow_fill:
            self.stats.tlb_fills += 1
        kind = _ACCESS.get(access, "read")
        satp = vcpu.csrs[CSR.SATP]
        perms = UC_PROT_ALL
        if satp >> 60:
            translated = self._translate(vcpu, satp, va, kind, after_shadow_fill)
            if translated is NEEDS_SHADOW_FILL:
                return NEEDS_SHADOW_FILL
            if not isinstance(translated, tuple):
                return False
            gpa, flags, pte_gpa = translated
            user, status = vcpu.mode == Mode.USER, vcpu.csrs[CSR.SSTATUS]
            if not permitted(flags | PTE_D, user, status) & _KIND_PROT[kind]:
                return self._fault(vcpu, va, kind, violation=False)
            wanted = PTE_A | (PTE_D if kind == "write" else 0)
            if flags & wanted != wanted:  # hardware A/D update: set them in the guest's PTE
                flags = self._set_accessed(vcpu, va, pte_gpa, flags | wanted)
            perms = permitted(flags, user, status)
        else:
            gpa = va & ~(PAGE - 1)
            if self.mode is PagingMode.NESTED:  # guest paging off: only the nested walk
                self.stats.nested_walks += 1
                self.stats.nested_refs += self.nested_levels
        if gpa == UART_BASE and kind != "fetch":
            entry.paddr, entry.perms = UART_BASE, UC_PROT_READ | UC_PROT_WRITE
            return True
        memory = vcpu.guest.memory
        frame = memory.frame_of(gpa)
        if frame is None:
            return self._fault(vcpu, va, kind, violation=True)
        if memory.host.refs[frame] > 1:  # shared: read-only until the first write copies it
            index = (gpa - memory.base) >> 12
            if kind == "write" and 0 <= index < len(memory.p2m):
                frame = memory.break_cow(index)
                self.cow_copies += 1
                vcpu.guest.flush_tlb()  # other virtual aliases of this page must not keep the old frame
            else:
                perms &= ~UC_PROT_WRITE
        entry.paddr, entry.perms = POOL_BASE + frame * PAGE, perms
        return True

    def _set_accessed(self, vcpu: VCPU, va: int, pte_gpa: int, flags: int) -> int:
        """Write the leaf PTE's new A/D bits into guest memory (and the shadow entry); returns the flags."""
        memory = vcpu.guest.memory
        pte = memory.read_u64(pte_gpa)
        frame = memory.frame_of(pte_gpa)
        if pte is None or not memory.write(pte_gpa, (pte | flags).to_bytes(8, "little")):
            return flags
        if memory.frame_of(pte_gpa) != frame:  # the write broke sharing of the table page
            vcpu.guest.flush_tlb()
        hit = vcpu.shadow.get(va >> 12)
        if hit is not None:
            vcpu.shadow[va >> 12] = (hit[0], flags, pte_gpa)
        return flags

    def _translate(self, vcpu: VCPU, satp: int, va: int, kind: str,
                   after_shadow_fill: bool) -> tuple[int, int, int] | _NeedsShadowFill | None:
        """Guest-virtual page -> (guest-physical page address, PTE flags, PTE address), shadow or nested."""
        if self.mode is PagingMode.SHADOW:
            hit = vcpu.shadow.get(va >> 12)
            if hit is None and not after_shadow_fill:  # the hidden fault: an exit walks the guest table
                self.stats.shadow_fills += 1
                return NEEDS_SHADOW_FILL
            if hit is None:  # the guest's own table refuses
                self._fault(vcpu, va, kind, violation=walk(vcpu.guest.memory, satp, va).fault == "access")
                return None
            return hit[0] << 12, hit[1], hit[2]
        result = walk(vcpu.guest.memory, satp, va)  # what nested-paging hardware does, counted
        m = self.nested_levels
        self.stats.nested_walks += 1
        self.stats.guest_pte_reads += result.pte_reads
        counter = self.nested_walk
        if counter is not None:
            self.stats.nested_refs += counter(vcpu, satp, va)
        else:  # every guest PTE read behind its own host walk, and the data's address behind one more
            self.stats.nested_refs += result.pte_reads * (m + 1) + (m if result.gpa is not None else 0)
        if result.gpa is None or result.pte_gpa is None:
            self._fault(vcpu, va, kind, violation=result.fault == "access")
            return None
        return result.gpa & ~(PAGE - 1), result.flags, result.pte_gpa

    @staticmethod
    def _fault(vcpu: VCPU, va: int, kind: str, *, violation: bool) -> bool:
        vcpu.pending_fault = (va, kind, violation)
        return False

    def flush(self, vcpu: VCPU) -> None:
        """``satp`` write or ``sfence.vma``: drop the vCPU's shadow table and the TLB."""
        if vcpu.shadow:
            self.stats.shadow_flushes += 1
            vcpu.shadow.clear()
        vcpu.guest.flush_tlb()
