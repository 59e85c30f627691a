"""Lab 02, trap and emulate: the toy VMM's exits, and an x86 guest that x86 cannot virtualize.

Popek and Goldberg (1974) call an instruction *sensitive* if it reads or changes the machine's
control state, and *privileged* if it traps when run outside supervisor mode. A trap-and-emulate
VMM runs the guest kernel deprivileged, so every privileged instruction traps and the VMM
emulates it on the guest's *virtual* state. Their theorem: this works (the VMM has the
properties of *equivalence*, *resource control* and *efficiency*) when every sensitive
instruction is privileged. The lab shows both sides, on real guest code:

* **RISC-V on the toy VMM** (:mod:`vlab.toyvmm`). :func:`run_guest` boots a guest program with
  some of the VMM's exit handlers replaced by the student's, and returns what the guest printed
  and the exits by reason (:class:`GuestRun`). :func:`measure_trap_cost` times a trap against a
  plain instruction on the same machine.
* **x86 in Unicorn**, where the theorem's condition fails. :func:`run_x86` runs a 32-bit code
  fragment either *natively* (at CPL0, where every instruction simply executes) or *under a
  trap-and-emulate VMM* (at CPL3 with a virtual interrupt flag): ``cli``/``sti`` trap and are
  emulated, but ``pushf``/``popf`` do not trap and see or change the *real* flags, so the guest
  diverges (Robin and Irvine, 2000, list 17 such instructions on the Pentium). Both runs return a
  per-instruction trace of the guest-visible state, so the divergence can be found by comparing
  them. The VMM in :func:`run_x86` also understands the two classic fixes: ``int3`` patched over
  a sensitive instruction (scan-and-patch, binary translation in miniature; the VMM looks the
  original instruction up) and explicit hypercalls ``int 0x81``/``int 0x82`` (paravirtualization).
  :func:`x86_trap_vector` runs one instruction at CPL3 and reports whether it trapped.

Unicorn quirk handled here: after a handled exception at CPL3 the next one becomes a double fault
(unicorn #1883), so after every trap the VMM restores a clean CPL3 context and writes the guest's
registers back into it. The graded answers live in the lab's source notebook, not here.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import unicorn
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32
from unicorn.x86_const import (
    UC_X86_REG_CS,
    UC_X86_REG_DS,
    UC_X86_REG_EAX,
    UC_X86_REG_EBP,
    UC_X86_REG_EBX,
    UC_X86_REG_ECX,
    UC_X86_REG_EDI,
    UC_X86_REG_EDX,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_EIP,
    UC_X86_REG_ES,
    UC_X86_REG_ESI,
    UC_X86_REG_ESP,
    UC_X86_REG_GDTR,
    UC_X86_REG_SS,
)

from vlab import plots
from vlab.errors import VlabError
from vlab.measure import Sample
from vlab.toyvmm.engine import open_unicorn
from vlab.toyvmm.exits import ExitHandler, ExitReason
from vlab.toyvmm.machine import MAILBOX, Machine
from vlab.toyvmm.programs import kernel_program, load_program

__all__ = [
    "show_figure",
    "GuestRun",
    "TrapCost",
    "csr_test_program",
    "console_test_program",
    "print_program",
    "measure_trap_cost",
    "params_for",
    "run_guest",
    "X86_INSTRUCTIONS",
    "X86Run",
    "X86Step",
    "disassemble_x86",
    "run_x86",
    "trace_table",
    "x86_fragment",
    "x86_trap_vector",
]

#: Display a plotly figure (in a notebook) or its text summary (elsewhere): :func:`vlab.plots.show`.
show_figure = plots.show


# ---------------------------------------------------------------- seeded parameters

#: CSRs the seeded CSR test program exercises (free to use outside a trap: the guest kernel
#: only needs them while it handles one)
_TEST_CSRS = ("sepc", "stval", "scause", "sstatus")


def params_for(seed: int) -> dict[str, Any]:
    """The per-student parameters of lab 02, derived from ``seed`` (see the notebook's params cell)."""
    rng = random.Random(seed)
    words = ["trap", "emulate", "popek", "goldberg", "shadow", "vcpu", "hypercall", "deprivilege"]
    return {
        "csr_values": [rng.getrandbits(48) | 1 << rng.randrange(48, 63) for _ in range(4)],
        "csr_bits": rng.randrange(1, 31),
        "message": f"{rng.choice(words)}-{rng.choice(words)}-{rng.randrange(100, 1000)}",
        "char": rng.choice("!#$%&*+?@^~"),
        "x86_seed": rng.getrandbits(32),
        "classify": sorted(rng.sample(sorted(X86_INSTRUCTIONS), 8)),
        "hidden_x86_seeds": [rng.getrandbits(32) for _ in range(3)],
    }


# ---------------------------------------------------------------- RISC-V guests on the toy VMM


def csr_test_program(values: Sequence[int], bits: int) -> bytes:
    """A guest that runs ``csrrw``, ``csrrs``, ``csrrc`` and their immediate forms on seeded values
    and stores what it reads back in its mailbox (word *i* at ``MAILBOX + 8*i``)."""
    lines = ["main:", "        li s1, MAILBOX"]
    slot = 0

    def store(register: str) -> None:
        nonlocal slot
        lines.append(f"        sd {register}, {8 * slot}(s1)")
        slot += 1

    for csr, value in zip(_TEST_CSRS, values, strict=False):
        lines += [f"        li t0, {value}", f"        csrrw t1, {csr}, t0"]
        store("t1")
        lines += [f"        li t0, {(value >> 7) ^ 0x5A5A}", f"        csrrs t1, {csr}, t0"]
        store("t1")
        lines += [f"        csrrc t1, {csr}, t0", f"        csrr t2, {csr}"]
        store("t1")
        store("t2")
    lines += [f"        csrrwi t1, sepc, {bits & ~3}", f"        csrrsi t1, sepc, {bits}",
              f"        csrrci t2, sepc, {bits}", "        csrr t3, sepc"]
    store("t1")
    store("t2")
    store("t3")
    lines.append("        ret")
    return kernel_program("\n".join(lines) + "\n", name="lab02.S")


def console_test_program(message: str, char: str) -> bytes:
    """A guest that prints ``message`` with the console-write hypercall, ``char`` with the
    put-char hypercall, then asks to print from outside its RAM (the result goes to the mailbox)."""
    text = message.replace("\\", "\\\\").replace('"', '\\"')
    main = f"""main:
        li s1, MAILBOX
        la a0, text
        li a1, {len(message.encode())}
        HYPERCALL HC_CONSOLE_WRITE
        sd a0, 0(s1)
        li a0, {ord(char)}
        HYPERCALL HC_PUTCHAR
        li a0, 0x1000                   # not guest RAM: the VMM must refuse, not crash
        li a1, 16
        HYPERCALL HC_CONSOLE_WRITE
        sd a0, 8(s1)
        ret
text:
        .ascii "{text}"
"""
    return kernel_program(main, name="lab02.S")


def print_program(message: str, how: str) -> bytes:
    """A guest that prints ``message`` once, through the UART driver (``how="uart"``: the kernel's
    ``uart_puts``, MMIO) or with one console-write hypercall (``how="hypercall"``), then shuts down.
    An empty message prints nothing at all (the baseline to subtract)."""
    if how not in ("uart", "hypercall"):
        raise VlabError("how must be 'uart' or 'hypercall'", field="how", value=how)
    text = message.replace("\\", "\\\\").replace('"', '\\"')
    length = len(message.encode())
    body = ("" if not message else "        la a0, text\n        call uart_puts\n" if how == "uart" else
            f"        la a0, text\n        li a1, {length}\n        HYPERCALL HC_CONSOLE_WRITE\n")
    return kernel_program(f"main:\n        addi sp, sp, -16\n        sd ra, 0(sp)\n{body}"
                          f"        ld ra, 0(sp)\n        addi sp, sp, 16\n        ret\ntext:\n"
                          f'        .asciz "{text}"\n', name="lab02.S")


@dataclass
class GuestRun:
    """What one guest did on the toy VMM: its console output, exits by reason and mailbox."""

    output: str
    exits: dict[str, int]
    state: str
    exit_code: int | None
    virtual_time: int
    mailbox: list[int]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (what a notebook function may return to the grader)."""
        return {"output": self.output, "exits": dict(self.exits), "state": self.state,
                "exit_code": self.exit_code, "virtual_time": self.virtual_time, "mailbox": list(self.mailbox)}


def _reason(key: ExitReason | str) -> ExitReason:
    if isinstance(key, ExitReason):
        return key
    try:
        return ExitReason[str(key).upper()]
    except KeyError:
        raise VlabError("unknown exit reason", field="handlers", value=key,
                        fix=f"use one of: {', '.join(r.name for r in ExitReason)}") from None


def run_guest(program: str | bytes, handlers: Mapping[ExitReason | str, ExitHandler] | None = None, *,
              ms: float = 100.0, mailbox_words: int = 16, machine: Machine | None = None) -> GuestRun:
    """Boot ``program`` (a name from :data:`vlab.toyvmm.programs.PROGRAMS`, or a flat binary) on a
    fresh toy VMM with ``handlers`` replacing the VMM's own for their exit reasons, and run it
    until it shuts down or ``ms`` virtual milliseconds have passed. For those reasons the default
    handlers refuse the part the lab asks the student to write (:meth:`~vlab.toyvmm.exits.HandlerTable.withhold`).

    :param handlers: exit reason (``ExitReason.WFI`` or ``"WFI"``) -> ``handler(exit)``.
    :param machine: run on this (fresh) machine instead, e.g. to watch it with an ExitMonitor.
    """
    vmm = machine if machine is not None else Machine()
    try:
        for key, handler in (handlers or {}).items():
            vmm.handlers.withhold(_reason(key), handler)  # the default no longer does the student's part
        binary = load_program(program) if isinstance(program, str) else program
        guest = vmm.add_guest(binary, name="guest")
        vmm.run(ms=ms)
        mailbox = [guest.memory.read_u64(MAILBOX + 8 * i) or 0 for i in range(mailbox_words)]
        return GuestRun(guest.uart.text, guest.exits, guest.state.value, guest.exit_code, vmm.now, mailbox)
    finally:
        if machine is None:
            vmm.close()




@dataclass(frozen=True)
class TrapCost:
    """Wall-clock cost of a trap against a plain instruction on the toy VMM (medians of repeats)."""

    ns_per_instruction: Sample
    ns_per_iteration_plain: Sample
    ns_per_iteration_trapping: Sample

    @property
    def ns_per_trap(self) -> float:
        """Extra time of a loop iteration whose one instruction traps (hypercall) over one that does not."""
        return self.ns_per_iteration_trapping.median - self.ns_per_iteration_plain.median

    @property
    def ratio(self) -> float:
        """How many plain instructions one trap costs."""
        return self.ns_per_trap / self.ns_per_instruction.median


def _time_loop(program: str, virtual_ms: float) -> tuple[float, int]:
    """Run a looping guest for ``virtual_ms``; return (seconds, loop iterations it completed)."""
    import time

    vmm = Machine(chunk=200_000)
    try:
        guest = vmm.add_guest(program)
        start = time.perf_counter()
        vmm.run(ms=virtual_ms)
        elapsed = time.perf_counter() - start
        return elapsed, guest.mailbox(0)
    finally:
        vmm.close()


def measure_trap_cost(repeats: int = 3, *, plain_ms: float = 2000.0, trapping_ms: float = 40.0) -> TrapCost:
    """Time the ``compute`` guest (6 instructions per iteration, no exit) against the
    ``hypercalls`` guest (6 instructions per iteration, one of them an ``ecall`` that exits)."""
    per_insn, plain, trapping = [], [], []
    for _ in range(repeats):
        seconds, iterations = _time_loop("compute", plain_ms)
        plain.append(seconds / iterations * 1e9)
        per_insn.append(plain[-1] / 6)
        seconds, iterations = _time_loop("hypercalls", trapping_ms)
        trapping.append(seconds / iterations * 1e9)
    return TrapCost(Sample(per_insn, unit="ns"), Sample(plain, unit="ns"), Sample(trapping, unit="ns"))


# ---------------------------------------------------------------- x86: memory layout and GDT

_GDT, _TRAMPOLINE, _CODE, _DATA, _STACK, _KSTACK = 0x1000, 0x10000, 0x10100, 0x50000, 0x80000, 0x90000
_MEMORY = 0x100000
_STACK_WORDS = 8  # the top of the guest stack is part of the guest-visible state
_IF = 1 << 9
_USER_CS, _USER_SS = 0x18 | 3, 0x20 | 3
_GPRS = {"eax": UC_X86_REG_EAX, "ebx": UC_X86_REG_EBX, "ecx": UC_X86_REG_ECX, "edx": UC_X86_REG_EDX,
         "esi": UC_X86_REG_ESI, "edi": UC_X86_REG_EDI, "ebp": UC_X86_REG_EBP, "esp": UC_X86_REG_ESP}
#: hypercalls of the paravirtual x86 guest: the VMM's pushf and popf
HC_PUSHF, HC_POPF = 0x81, 0x82
_GP, _BREAKPOINT = 13, 3
_UcError: type[Exception] = unicorn.UcError  # type: ignore[attr-defined]


def _descriptor(access: int) -> bytes:
    """A flat 4 GiB segment descriptor with the given access byte (DPL is in bits 5-6)."""
    base, limit, flags = 0, 0xFFFFF, 0xC
    return struct.pack("<Q", (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
                       | (((limit >> 16) & 0xF) << 48) | (flags << 52) | ((base >> 24) << 56))


#: null, kernel code, kernel data, user code (DPL 3), user data (DPL 3)
_GDT_BYTES = b"\0" * 8 + b"".join(_descriptor(a) for a in (0x9A, 0x92, 0xFA, 0xF2))


#: Instructions for the classification exercise: name -> 32-bit encoding (operands chosen so
#: that they run on the prepared machine: ``eax`` points at writable data, ``ecx`` is a selector).
X86_INSTRUCTIONS: dict[str, bytes] = {
    "add eax, ebx": bytes.fromhex("01d8"),
    "mov eax, ebx": bytes.fromhex("89d8"),
    "xor ecx, ecx": bytes.fromhex("31c9"),
    "imul eax, ebx": bytes.fromhex("0fafc3"),
    "lea edx, [eax+4]": bytes.fromhex("8d5004"),
    "nop": bytes.fromhex("90"),
    "hlt": bytes.fromhex("f4"),
    "cli": bytes.fromhex("fa"),
    "sti": bytes.fromhex("fb"),
    "lgdt [eax]": bytes.fromhex("0f0110"),
    "lidt [eax]": bytes.fromhex("0f0118"),
    "mov cr3, eax": bytes.fromhex("0f22d8"),
    "mov eax, cr0": bytes.fromhex("0f20c0"),
    "wrmsr": bytes.fromhex("0f30"),
    "rdmsr": bytes.fromhex("0f32"),
    "lmsw ax": bytes.fromhex("0f01f0"),
    "clts": bytes.fromhex("0f06"),
    "invlpg [eax]": bytes.fromhex("0f0138"),
    "ltr ax": bytes.fromhex("0f00d8"),
    "lldt ax": bytes.fromhex("0f00d0"),
    "wbinvd": bytes.fromhex("0f09"),
    "sgdt [eax]": bytes.fromhex("0f0100"),
    "sidt [eax]": bytes.fromhex("0f0108"),
    "sldt eax": bytes.fromhex("0f00c0"),
    "smsw eax": bytes.fromhex("0f01e0"),
    "str eax": bytes.fromhex("0f00c8"),
    "pushfd": bytes.fromhex("9c"),
    "popfd": bytes.fromhex("9d"),
    "lar eax, ecx": bytes.fromhex("0f02c1"),
    "lsl eax, ecx": bytes.fromhex("0f03c1"),
    "verr cx": bytes.fromhex("0f00e1"),
    "verw cx": bytes.fromhex("0f00e9"),
    "mov eax, cs": bytes.fromhex("8cc8"),
    "push cs": bytes.fromhex("0e"),
}


def disassemble_x86(code: bytes, address: int = _CODE) -> list[tuple[int, int, str]]:
    """``(address, size, text)`` for each instruction of 32-bit x86 ``code`` (capstone)."""
    import capstone

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    return [(i.address, i.size, f"{i.mnemonic} {i.op_str}".strip()) for i in decoder.disasm(code, address)]


def _machine() -> Any:
    uc: Any = open_unicorn(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, _MEMORY)
    uc.mem_write(_GDT, _GDT_BYTES)
    uc.reg_write(UC_X86_REG_GDTR, (0, _GDT, len(_GDT_BYTES) - 1, 0))
    for register in (UC_X86_REG_SS, UC_X86_REG_DS, UC_X86_REG_ES):
        uc.reg_write(register, 0x10)
    return uc


def _enter_user_mode(uc: Any, entry: int) -> None:
    """Drop to CPL3 the way a kernel does: ``iretd`` with a user CS/SS frame (IF set)."""
    uc.mem_write(_TRAMPOLINE, b"\xcf")  # iretd
    uc.mem_write(_KSTACK, struct.pack("<5I", entry, _USER_CS, 0x202, _STACK, _USER_SS))
    uc.reg_write(UC_X86_REG_ESP, _KSTACK)
    uc.emu_start(_TRAMPOLINE, entry)
    if uc.reg_read(UC_X86_REG_CS) & 3 != 3:  # pragma: no cover - a Unicorn regression
        raise VlabError("Unicorn did not enter CPL3", field="cs", value=uc.reg_read(UC_X86_REG_CS))


def x86_trap_vector(instruction: bytes) -> int | None:
    """Run one instruction at CPL3 (user mode); return the exception vector it raised, or None.

    ``eax`` points at writable data and ``ecx`` holds the user data selector, so memory and
    selector operands are valid: a trap means the CPU refused the instruction at CPL3.
    """
    uc = _machine()
    uc.mem_write(_CODE, instruction + b"\x90")
    _enter_user_mode(uc, _CODE)
    uc.reg_write(UC_X86_REG_EAX, _DATA)
    uc.reg_write(UC_X86_REG_ECX, _USER_SS)
    vectors: list[int] = []

    def on_interrupt(uc: Any, vector: int, _data: object) -> None:
        vectors.append(vector)
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_interrupt)
    try:
        uc.emu_start(_CODE, _CODE + len(instruction), count=1)
    except _UcError:
        return 6  # #UD: Unicorn does not implement it
    return vectors[0] if vectors else None


# ---------------------------------------------------------------- x86: the guest fragment


def x86_fragment(seed: int, flavour: str = "plain") -> bytes:
    """The seeded guest-kernel fragment: arithmetic, a ``cli``/``sti`` critical section whose
    flags are saved and restored with ``pushfd``/``popfd``, and immediates that happen to contain
    the bytes of ``pushfd``/``popfd`` (0x9c/0x9d).

    :param flavour: ``"plain"`` (what a kernel for real hardware does) or ``"paravirt"`` (the
        same kernel ported to the VMM: ``pushfd``/``popfd`` become hypercalls ``int 0x81``/``0x82``).
    """
    if flavour not in ("plain", "paravirt"):
        raise VlabError("flavour must be 'plain' or 'paravirt'", field="flavour", value=flavour)
    rng = random.Random(seed)
    pushf = b"\x9c" if flavour == "plain" else bytes([0xCD, HC_PUSHF])
    popf = b"\x9d" if flavour == "plain" else bytes([0xCD, HC_POPF])

    def filler() -> bytes:
        imm = rng.choice([0x9C, 0x9D, 0x9D9C]) << (8 * rng.randrange(2)) | rng.randrange(1 << 12) << 16
        return rng.choice([
            b"\xb8" + struct.pack("<I", imm),          # mov eax, imm (contains 0x9c/0x9d)
            b"\x01\xd8",                               # add eax, ebx
            b"\x42",                                   # inc edx
            b"\x81\xc3" + struct.pack("<I", imm),      # add ebx, imm
            b"\x89\xc6",                               # mov esi, eax
        ])

    def pad() -> bytes:
        return b"".join(filler() for _ in range(rng.randint(1, 3)))

    save_irq = b"\xfa" + pushf + b"\x59"               # cli ; pushfd ; pop ecx
    restore = b"\x51" + popf                            # push ecx ; popfd
    irq_off = b"\x6a\x02" + popf                        # push 2 ; popfd  (IF := 0 via popfd)
    sections = [pad() + save_irq + pad() + restore, pad() + b"\xfb" + pad() + irq_off + pad()]
    if rng.random() < 0.5:
        sections.reverse()
        sections[0] = b"\xfb" + sections[0]            # start from a known IF = 1
    probe = pushf + b"\x5f"                             # pushfd ; pop edi: the guest looks at IF
    return b"".join(sections) + pad() + probe


# ---------------------------------------------------------------- x86: native run and VMM run


@dataclass(frozen=True)
class X86Step:
    """One executed guest instruction and the guest-visible state right after it.

    :ivar state: general registers, ``if`` (the interrupt flag *the guest* has: the real one when
        native, the VMM's virtual one when virtualized) and ``stack`` (the top stack words).
    :ivar trapped: the instruction trapped to the VMM (and was emulated).
    """

    address: int
    text: str
    state: dict[str, Any]
    trapped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "text": self.text, "state": self.state, "trapped": self.trapped}


@dataclass
class X86Run:
    """The result of :func:`run_x86`."""

    mode: str
    steps: list[X86Step] = field(default_factory=list)
    traps: int = 0

    @property
    def final(self) -> dict[str, Any]:
        """The guest-visible state at the end."""
        return self.steps[-1].state if self.steps else {}

    def trace(self) -> list[dict[str, Any]]:
        """The steps as plain dicts (JSON-able, what the lab's functions take)."""
        return [step.as_dict() for step in self.steps]


class _Virtualized:
    """The trap-and-emulate VMM for one x86 fragment at CPL3."""

    def __init__(self, uc: Any, original: bytes) -> None:
        self.uc = uc
        self.original = original
        self.virtual_if = 1
        self.vectors: list[int] = []
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.clean = uc.context_save()

    def _on_interrupt(self, uc: Any, vector: int, _data: object) -> None:
        self.vectors.append(vector)
        uc.emu_stop()

    def _push(self, value: int) -> None:
        esp = self.uc.reg_read(UC_X86_REG_ESP) - 4
        self.uc.mem_write(esp, struct.pack("<I", value))
        self.uc.reg_write(UC_X86_REG_ESP, esp)

    def _pop(self) -> int:
        esp = self.uc.reg_read(UC_X86_REG_ESP)
        value: int = struct.unpack("<I", self.uc.mem_read(esp, 4))[0]
        self.uc.reg_write(UC_X86_REG_ESP, esp + 4)
        return value

    def emulate_pushf(self) -> None:
        flags = self.uc.reg_read(UC_X86_REG_EFLAGS) & ~_IF
        self._push(flags | (_IF if self.virtual_if else 0))

    def emulate_popf(self) -> None:
        value = self._pop()
        self.virtual_if = int(bool(value & _IF))
        arithmetic = 0x8D5  # CF PF AF ZF SF OF: what CPL3 may change for real
        flags = self.uc.reg_read(UC_X86_REG_EFLAGS)
        self.uc.reg_write(UC_X86_REG_EFLAGS, (flags & ~arithmetic) | (value & arithmetic))

    def handle(self, vector: int, eip: int) -> tuple[int, str]:
        """Emulate the trapping instruction; return the next EIP and what was emulated."""
        if vector == _GP:
            size, text = _decode_one(self.uc, eip)
            if text == "cli":
                self.virtual_if = 0
            elif text == "sti":
                self.virtual_if = 1
            else:
                raise VlabError("the guest ran a privileged instruction this VMM does not emulate",
                                field="instruction", value=f"{eip:#x}: {text}")
            return eip + size, text
        if vector == _BREAKPOINT:  # a patched instruction: emulate the original one
            original = self.original[eip - 1 - _CODE]
            if original == 0x9C:
                self.emulate_pushf()
                return eip, "pushfd (patched)"
            if original == 0x9D:
                self.emulate_popf()
                return eip, "popfd (patched)"
            raise VlabError("int3 over an instruction that is neither pushfd nor popfd", field="patch",
                            value=f"{eip - 1:#x}: original byte {original:#04x}",
                            fix="patch only the first byte of pushfd/popfd instructions")
        if vector in (HC_PUSHF, HC_POPF):
            (self.emulate_pushf if vector == HC_PUSHF else self.emulate_popf)()
            return eip, f"hypercall {vector:#x}"
        raise VlabError("the guest raised an exception this VMM does not handle", field="vector",
                        value=vector, detail=f"at {eip:#x}")

    def resume(self, registers: Mapping[int, int]) -> None:
        """Unicorn #1883: restore a clean CPL3 context before re-entering, then the guest's registers."""
        self.uc.context_restore(self.clean)
        for register, value in registers.items():
            self.uc.reg_write(register, value)


def _decode_one(uc: Any, eip: int) -> tuple[int, str]:
    for _address, size, text in disassemble_x86(bytes(uc.mem_read(eip, 16)), eip)[:1]:
        return size, text
    return 1, "(bad)"


def _state(uc: Any, interrupt_flag: int) -> dict[str, Any]:
    state: dict[str, Any] = {name: uc.reg_read(reg) for name, reg in _GPRS.items()}
    state["if"] = interrupt_flag
    stack = uc.mem_read(_STACK - 4 * _STACK_WORDS, 4 * _STACK_WORDS)
    state["stack"] = list(struct.unpack(f"<{_STACK_WORDS}I", stack))
    return state


def _all_registers(uc: Any) -> dict[int, int]:
    registers = {reg: uc.reg_read(reg) for reg in _GPRS.values()}
    registers[UC_X86_REG_EFLAGS] = uc.reg_read(UC_X86_REG_EFLAGS) | _IF
    return registers


def run_x86(code: bytes, mode: str = "native", *, original: bytes | None = None,
            max_steps: int = 500) -> X86Run:
    """Run a 32-bit x86 guest fragment, one instruction at a time, recording the guest-visible state.

    :param mode: ``"native"`` — the guest kernel on bare hardware (CPL0: everything executes);
        ``"vmm"`` — the same kernel deprivileged to CPL3 under a trap-and-emulate VMM that keeps the
        guest's interrupt flag virtual.
    :param original: for patched code, the unpatched fragment (the VMM's copy of the original
        instructions, which its ``int3`` handler emulates). Defaults to ``code``.
    """
    if mode not in ("native", "vmm"):
        raise VlabError("mode must be 'native' or 'vmm'", field="mode", value=mode)
    if not code or len(code) > 4096:
        raise VlabError("the fragment must be 1 to 4096 bytes of code", field="code", value=len(code))
    uc = _machine()
    uc.mem_write(_CODE, bytes(code))
    end = _CODE + len(code)
    vmm: _Virtualized | None = None
    if mode == "vmm":
        _enter_user_mode(uc, _CODE)
        vmm = _Virtualized(uc, bytes(original if original is not None else code))
    else:
        uc.reg_write(UC_X86_REG_ESP, _STACK)
        uc.reg_write(UC_X86_REG_EFLAGS, 0x202)
    run = X86Run(mode)
    eip = _CODE
    while eip != end and len(run.steps) < max_steps:
        start, (_size, text) = eip, _decode_one(uc, eip)
        if vmm is not None:
            vmm.vectors.clear()
        uc.emu_start(eip, end, count=1)
        eip = uc.reg_read(UC_X86_REG_EIP)
        if vmm is None:
            interrupt_flag = int(bool(uc.reg_read(UC_X86_REG_EFLAGS) & _IF))
            run.steps.append(X86Step(start, text, _state(uc, interrupt_flag)))
            continue
        trapped = bool(vmm.vectors)
        if trapped:
            vmm.resume(_all_registers(uc))
            eip, text = vmm.handle(vmm.vectors[0], eip)
            run.traps += 1
        run.steps.append(X86Step(start, text, _state(uc, vmm.virtual_if), trapped))
    return run


def trace_table(native: X86Run, virtualized: X86Run, registers: Sequence[str] = ("eax", "ecx", "edi")) -> str:
    """The two runs side by side: address, instruction, the guest's IF and a few registers.

    Lines are not marked: finding where the runs part is the student's job.
    """
    head = f"{'address':>9}  {'instruction':<22} {'IF n/v':>6}  " + "  ".join(
        f"{r + ' native':>12} {r + ' vmm':>10}" for r in registers) + "  trap"
    lines = [head]
    for a, b in zip(native.steps, virtualized.steps, strict=False):
        cells = "  ".join(f"{a.state[r]:>12x} {b.state[r]:>10x}" for r in registers)
        lines.append(f"{a.address:>#9x}  {a.text:<22} {a.state['if']:>3}/{b.state['if']:<2}  {cells}"
                     f"  {'yes' if b.trapped else ''}")
    return "\n".join(lines)
