"""Everything in the VMM that exists because the "hardware" is Unicorn 2.1.4: the hooks that turn
its events into :class:`~vlab.toyvmm.exits.Exit` objects, fast register access, and the sink.

One Unicorn instance per guest (each has its own address space). The host's frame pool is mapped
into each at :data:`~vlab.toyvmm.memory.POOL_BASE`, reachable only through the TLB-fill hook
(Unicorn's "virtual TLB" mode), which asks the MMU. Three hooks:

* interrupt hook -- ``ecall`` (intno 8) and illegal instructions (intno 2: CSR access, ``wfi``,
  ``sret``, ``sfence.vma`` from U-mode). The PC is already past the instruction and no trap entry
  happened, so the engine fetches and decodes the word itself (:func:`classify`).
* MMIO callbacks -- loads/stores to the UART page.
* TLB-fill hook -- every TLB miss goes to :meth:`~vlab.toyvmm.mmu.MMU.fill`; when it answers
  :data:`~vlab.toyvmm.mmu.NEEDS_SHADOW_FILL` the engine dispatches a ``SHADOW_FILL`` exit and
  asks again. Returning ``False`` ends ``emu_start`` with an error; :meth:`Engine.run` then turns
  the pending fault into a ``PAGE_FAULT`` / ``ILLEGAL_ACCESS`` exit (or ``ebreak``'s invalid
  instruction into ``ILLEGAL_INSN``).

Quirks handled here: hooks are registered on the C library directly (ctypes), not through the
binding's wrappers, which add two Python frames and an exception guard per call (a bare hook runs
2.5x faster, ``bench/bench_toyvmm.py``); so the engine keeps its own guard (:meth:`Engine._failed`).
``emu_start``'s ``until`` would stop a guest that runs code at that address, so the engine runs
with an empty exit list and only ``count``. Unicorn does not say how far into a ``count`` it got
when a hook stops it, so a handler that ends a chunk early parks the vCPU and the rest of the
count is burnt in the :class:`Sink`, which tells exactly how much was left.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from typing import TYPE_CHECKING, Any

import unicorn
from unicorn import riscv_const as rv
from unicorn import unicorn_const as uc_const
from unicorn.unicorn_py3 import unicorn as binding

from vlab.errors import StateError
from vlab.toyvmm.devices import UART_BASE
from vlab.toyvmm.exits import Exit, ExitReason
from vlab.toyvmm.isa import CSR, Insn, decode
from vlab.toyvmm.memory import PAGE, POOL_BASE
from vlab.toyvmm.mmu import NEEDS_SHADOW_FILL, walk
from vlab.toyvmm.vcpu import Mode

if TYPE_CHECKING:
    from vlab.toyvmm.machine import Machine
    from vlab.toyvmm.memory import HostMemory
    from vlab.toyvmm.vcpu import VCPU

__all__ = ["Engine", "Sink", "FastRegs", "ClosedRegs", "classify", "new_cpu", "UcError"]

_Uc: Any = unicorn.Uc  # type: ignore[attr-defined]  # the binding's typing is partial
UcError: type[Exception] = unicorn.UcError  # type: ignore[attr-defined]

MASK64 = (1 << 64) - 1
_PC, _REG_T0 = rv.UC_RISCV_REG_PC, rv.UC_RISCV_REG_X0 + 5
_READ_EXEC = uc_const.UC_PROT_READ | uc_const.UC_PROT_EXEC
_SYSTEM_REASONS = {"wfi": ExitReason.WFI, "sret": ExitReason.SRET, "sfence": ExitReason.SFENCE}
# Module-level names for the reasons the hooks use: an enum class attribute lookup per trap adds up.
_HYPERCALL, _SYSCALL, _ILLEGAL_INSN = ExitReason.HYPERCALL, ExitReason.SYSCALL, ExitReason.ILLEGAL_INSN
_MMIO_READ, _MMIO_WRITE = ExitReason.MMIO_READ, ExitReason.MMIO_WRITE
_unpack_word = struct.Struct("<I").unpack_from


class FastRegs:
    """Register access for the hot trap path: direct C calls instead of the binding's generic path.

    The binding's ``reg_read``/``reg_write`` measured ~10x slower than this. Here the Unicorn
    library is opened once more through ctypes with no ``argtypes`` (argument conversion costs as
    much as the call) and as a ``PyDLL``: the calls are short, so not releasing the GIL is cheaper.
    """

    _lib: Any = None

    def __init__(self, uc: Any) -> None:
        if FastRegs._lib is None:
            FastRegs._lib = ctypes.PyDLL(binding.uclib._name)
        self._read, self._write = self._lib.uc_reg_read, self._lib.uc_reg_write
        self._handle = uc._uch
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)

    def read(self, reg: int) -> int:
        self._read(self._handle, reg, self._ref)
        return self._buf.value

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value & MASK64
        self._write(self._handle, reg, self._ref)


class ClosedRegs:
    """Stands in for :class:`FastRegs` once the machine is closed: the engine's memory is freed."""

    def read(self, reg: int) -> int:
        raise StateError("read a register", "closed", ["open"], fix="read registers before Machine.close()")

    def write(self, reg: int, value: int) -> None:
        raise StateError("write a register", "closed", ["open"], fix="write registers before Machine.close()")


class Sink:
    """A VMM-owned page with ``1: addi t0, t0, 1; j 1b`` where a parked vCPU's unused instruction
    count is burnt: t0 then tells exactly how many guest instructions really ran. Its virtual
    address is not canonical in Sv39/Sv48 and beyond any RAM with paging off: no guest reaches it."""

    VA, PA = 1 << 63, 0x2000_0000
    CODE = (0x00128293).to_bytes(4, "little") + (0xFFDFF06F).to_bytes(4, "little")

    def __init__(self) -> None:
        self.active = False

    def map_into(self, uc: Any) -> None:
        uc.mem_map(self.PA, PAGE, _READ_EXEC)
        uc.mem_write(self.PA, self.CODE)

    def park(self, vcpu: VCPU) -> None:
        """Save the guest's context (its PC past the trap) and send the CPU into the sink."""
        vcpu.parked_pc = vcpu.regs.read(_PC)
        vcpu.context = vcpu.guest.uc.context_save()
        self.active = True
        vcpu.regs.write(_REG_T0, 0)
        vcpu.regs.write(_PC, self.VA)
        vcpu.guest.flush_tlb()

    def settle(self, vcpu: VCPU, count: int) -> int:
        """After ``emu_start`` returned: restore the parked guest; returns the instructions it ran."""
        t0, pc = vcpu.regs.read(_REG_T0), vcpu.regs.read(_PC)
        vcpu.guest.uc.context_restore(vcpu.context)
        vcpu.parked_pc, self.active = None, False
        vcpu.guest.flush_tlb()
        return count - (2 * t0 - (0 if pc == self.VA else 1))

    def fill(self, va: int, entry: Any) -> bool | None:
        """The TLB fill while parked (or of the sink's page): True/False, or None if it is the MMU's."""
        if va & ~(PAGE - 1) == self.VA:
            if not self.active:
                return False  # a guest that touched it: an engine error, and it is killed
            entry.paddr, entry.perms = self.PA, _READ_EXEC
            return True
        return False if self.active else None


@functools.lru_cache(maxsize=4096)
def classify(word: int) -> tuple[ExitReason, Insn]:
    """Exit reason of an instruction word that trapped in the guest's (virtual) S-mode, and its
    decoding: a pure function of the word, so cached (from U-mode every such trap is ILLEGAL_INSN)."""
    insn = decode(word)
    if insn.kind == "csr":
        return (ExitReason.CSR_WRITE if insn.writes else ExitReason.CSR_READ), insn
    return _SYSTEM_REASONS.get(insn.kind, ExitReason.ILLEGAL_INSN), insn


def new_cpu(host: HostMemory, sink: Sink) -> Any:
    """A Unicorn RISC-V CPU with the host pool and the sink mapped, in virtual-TLB mode, no exits."""
    uc = _Uc(uc_const.UC_ARCH_RISCV, uc_const.UC_MODE_RISCV64)
    uc.ctl_set_tlb_mode(uc_const.UC_TLB_VIRTUAL)
    uc.ctl_exits_enabled(True)  # with no exits: `count` alone ends a run (see Engine.run)
    uc.ctl_set_exits([])
    uc.mem_map_ptr(POOL_BASE, host.frames * PAGE, uc_const.UC_PROT_ALL, host.address)
    sink.map_into(uc)
    return uc


class Engine:
    """Runs vCPUs on Unicorn and turns its hooks into exits for :meth:`Machine.dispatch`."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._dispatch, self._view = machine.dispatch, machine.host.view  # bound once: the hot path
        self.sink = Sink()
        self.current: VCPU | None = None
        self._in_trap_hook = False
        self._hook_error: BaseException | None = None

    def install(self, uc: Any) -> tuple[Any, ...]:
        """Register the hooks on the C library; returns the ctypes callbacks, which must live as
        long as the CPU (all are installed before any code is translated: unicorn #2200)."""
        interrupt = binding.HOOK_INTR_CFUNC(self._on_interrupt)
        tlb_fill = binding.HOOK_TLB_FILL_CFUNC(self._on_tlb_fill)
        mmio_read = binding.MMIO_READ_CFUNC(self._on_mmio_read)
        mmio_write = binding.MMIO_WRITE_CFUNC(self._on_mmio_write)
        lib, handle = binding.uclib, uc._uch
        statuses = [lib.uc_hook_add(handle, ctypes.byref(ctypes.c_size_t()), kind, callback, None, 1, 0)
                    for kind, callback in ((uc_const.UC_HOOK_INTR, interrupt), (uc_const.UC_HOOK_TLB_FILL, tlb_fill))]
        statuses.append(lib.uc_mmio_map(handle, UART_BASE, PAGE, mmio_read, None, mmio_write, None))
        if any(statuses):
            raise UcError(max(statuses))
        return interrupt, tlb_fill, mmio_read, mmio_write

    def run(self, vcpu: VCPU, count: int) -> int:
        """Run up to ``count`` instructions of ``vcpu``; returns how many the guest really executed."""
        uc = vcpu.guest.uc
        self.current = vcpu
        failure: Exception | None = None
        try:
            uc.emu_start(vcpu.regs.read(_PC), 0, count=count)
        except UcError as error:
            failure = error
        if self._hook_error is not None:  # a hook raised (see _failed): it is the real cause
            raised, self._hook_error = self._hook_error, None
            if self.sink.active:
                self.sink.settle(vcpu, count)
            raise raised
        if self.sink.active:
            return self.sink.settle(vcpu, count)
        if failure is not None:
            self._on_error(vcpu, failure)
        return count  # Unicorn does not say where in the count it failed: charge it all

    def stop(self, vcpu: VCPU) -> None:
        """End the running chunk (a handler asked): park in the sink from a trap, else stop at the
        end of the translation block (MMIO or TLB hooks)."""
        if self.sink.active:
            return
        if self._in_trap_hook:
            self.sink.park(vcpu)
        else:
            vcpu.guest.uc.emu_stop()

    def fetch(self, vcpu: VCPU, pc: int) -> int:
        """The instruction word at guest-virtual ``pc`` (0 if it cannot be read)."""
        frame = vcpu.guest.fetch_cache.get(pc >> 12)
        if frame is None:
            satp = vcpu.csrs[CSR.SATP]
            gpa = walk(vcpu.guest.memory, satp, pc).gpa if satp >> 60 else pc
            frame = vcpu.guest.memory.frame_of(gpa) if gpa is not None else None
            if frame is None:
                return 0
            vcpu.guest.fetch_cache[pc >> 12] = frame
        word: int = _unpack_word(self.machine.host.view, frame * PAGE + (pc & (PAGE - 1)))[0]
        return word

    # The hooks are called from C through ctypes, which would print and drop an exception: each
    # catches everything and hands it to _failed, which stops the engine so that run() raises it.
    def _on_interrupt(self, uc: Any, intno: int, _data: Any) -> None:
        vcpu = self.current
        if self.sink.active or vcpu is None:
            return
        self._in_trap_hook = True
        try:
            if intno == 8:
                self._dispatch(Exit(_HYPERCALL if vcpu.mode else _SYSCALL, vcpu))
            elif intno == 2:
                pc = vcpu.regs.read(_PC) - 4  # Unicorn already stepped past it
                frame = vcpu.guest.fetch_cache.get(pc >> 12)  # fetch()'s fast path, inlined: calls cost
                if frame is None:
                    word = self.fetch(vcpu, pc)
                else:
                    word = _unpack_word(self._view, frame * PAGE + (pc & 0xFFF))[0]
                reason, insn = classify(word)
                self._dispatch(Exit(reason if vcpu.mode else _ILLEGAL_INSN, vcpu, pc, insn, word))
            else:  # other synchronous exceptions: reflect them to the guest kernel as they are
                vcpu.inject_trap(intno, 0, vcpu.regs.read(_PC))
        except BaseException as error:
            self._failed(error)
        finally:
            self._in_trap_hook = False

    def _on_mmio_read(self, uc: Any, offset: int, size: int, _data: Any) -> int:
        try:
            exit = Exit(_MMIO_READ, self.current, None, None, 0, offset, size)  # type: ignore[arg-type]
            self.machine.dispatch(exit)
            return exit.value
        except BaseException as error:
            self._failed(error)
            return 0

    def _on_mmio_write(self, uc: Any, offset: int, size: int, value: int, _data: Any) -> None:
        try:
            self.machine.dispatch(Exit(_MMIO_WRITE, self.current, None, None, 0, offset, size, value))  # type: ignore[arg-type]
        except BaseException as error:
            self._failed(error)

    def _on_tlb_fill(self, uc: Any, va: int, access: int, entry: Any, _data: Any) -> bool:
        try:
            vcpu = self.current
            assert vcpu is not None
            entry = entry.contents
            own = self.sink.fill(va, entry)
            if own is not None:
                return own
            mmu = self.machine.mmu
            filled = mmu.fill(vcpu, va, access, entry)
            if filled is NEEDS_SHADOW_FILL:  # shadow paging's hidden fault: an exit, then again
                self.machine.dispatch(Exit(ExitReason.SHADOW_FILL, vcpu, vcpu.pc, addr=va, access=mmu.kind(access)))
                filled = mmu.fill(vcpu, va, access, entry, after_shadow_fill=True)
            return filled is True
        except BaseException as error:
            self._failed(error)
            return False

    def _failed(self, error: BaseException) -> None:
        if self._hook_error is None:  # the first one is the cause; later ones are consequences
            self._hook_error = error
        if self.current is not None:
            self.current.guest.uc.emu_stop()

    def _on_error(self, vcpu: VCPU, error: Any) -> None:
        """``emu_start`` failed: deliver the fault the TLB-fill hook left, or reflect the instruction."""
        machine = self.machine
        fault, vcpu.pending_fault = vcpu.pending_fault, None
        pc = vcpu.regs.read(_PC)
        if fault is None:
            if error.errno == uc_const.UC_ERR_INSN_INVALID:  # e.g. ebreak: the handler tells them apart
                machine.dispatch(Exit(ExitReason.ILLEGAL_INSN, vcpu, pc, word=self.fetch(vcpu, pc)))
            else:
                machine.record_violation(vcpu, pc, pc, "fetch", f"unicorn error: {error}")
                vcpu.guest.kill(f"unicorn error {error}")
            return
        va, kind, violation = fault
        if violation:
            machine.record_violation(vcpu, pc, va, kind, "outside guest RAM")
        if pc == vcpu.csrs[CSR.STVEC] and vcpu.mode == Mode.SUPERVISOR:
            vcpu.guest.kill("double fault: the trap handler itself faults")
        else:
            reason = ExitReason.ILLEGAL_ACCESS if violation else ExitReason.PAGE_FAULT
            machine.dispatch(Exit(reason, vcpu, pc, addr=va, access=kind))
