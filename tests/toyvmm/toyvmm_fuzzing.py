"""The isolation fuzzer: random instruction streams in guest kernels, next to innocent guests.

Each stream is 48 random 32-bit words (biased towards loads/stores with random base registers,
CSR accesses and SYSTEM instructions) run in S-mode by the real guest kernel, whose trap handler
skips faulting instructions; all 31 registers start random (many near or outside RAM). Three
fuzz guests are rebooted with new streams every round; a canary guest computes and a halted
guest's memory is a checksum. Every TLB fill the VMM performs is audited: the machine frame it
maps must belong to the filling guest. Used by ``test_isolation.py`` and ``bench_toyvmm.py --fuzz``.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import RAM_BASE, GuestState, Machine, RoundRobin
from vlab.toyvmm.devices import UART_BASE
from vlab.toyvmm.memory import PAGE, POOL_BASE

REGTABLE = RAM_BASE + 0x3000
HARNESS = kernel_program(f"li t6, {REGTABLE}\n" + "".join(
    f"ld x{r}, {8 * r}(t6)\n" for r in range(1, 31)) + "ld t6, 248(t6)\nstream:\n")
STREAM_WORDS = 48
_ADDRESSES = [0, RAM_BASE, RAM_BASE + 0x1000, RAM_BASE + 0xFFF8, RAM_BASE + 0x10000, RAM_BASE + 0x100000,
              UART_BASE, UART_BASE + 0x1000, POOL_BASE, POOL_BASE + 0x10000, 0x2000_0000,
              0xFFFF_FFFF_FFFF_F000, 0x7FFF_F000]
_CSRS = [0x100, 0x104, 0x105, 0x140, 0x141, 0x142, 0x143, 0x144, 0x14D, 0x180, 0x300, 0x305, 0x341,
         0xC00, 0xC01, 0xC02, 0x5C0, 0xF14]
_SYSTEM = [0x00000073, 0x10500073, 0x10200073, 0x30200073, 0x12000073, 0x00100073]


def random_word(rng: random.Random) -> int:
    kind = rng.random()
    rd, rs1, rs2 = rng.randrange(32), rng.randrange(32), rng.randrange(32)
    imm = rng.randrange(4096)
    if kind < 0.35:  # load or store
        if rng.random() < 0.5:
            return (imm << 20) | (rs1 << 15) | (rng.choice([0, 1, 2, 3, 4, 5, 6]) << 12) | (rd << 7) | 0x03
        return ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (rng.randrange(4) << 12) | ((imm & 31) << 7) | 0x23
    if kind < 0.55:  # CSR access
        return (rng.choice(_CSRS) << 20) | (rs1 << 15) | (rng.choice([1, 2, 3, 5, 6, 7]) << 12) | (rd << 7) | 0x73
    if kind < 0.65:
        return rng.choice(_SYSTEM)
    if kind < 0.75:  # ecall with a random hypercall number already in a7: plain ecall
        return 0x00000073
    if kind < 0.8:  # short forward/backward jumps
        offset = rng.choice([-16, -8, 8, 16, 64]) & 0x1FFFFF
        return (((offset >> 20) & 1) << 31) | (((offset >> 1) & 0x3FF) << 21) | (((offset >> 11) & 1) << 20) \
            | (((offset >> 12) & 0xFF) << 12) | 0x6F
    return rng.getrandbits(32)


def random_registers(rng: random.Random) -> bytes:
    values = [0] + [rng.choice(_ADDRESSES) + rng.randrange(-64, 64) * 8 if rng.random() < 0.6
                    else rng.getrandbits(64) for _ in range(31)]
    values[17] = rng.randrange(12)  # a7: mostly valid hypercall numbers
    return b"".join((v % (1 << 64)).to_bytes(8, "little") for v in values)


class FillAudit:
    """Wraps the engine's TLB-fill hook (real fills, observed) and checks each frame it maps."""

    def __init__(self, machine: Machine) -> None:
        self.machine, self.inner, self.fills, self.escapes = machine, machine.engine._on_tlb_fill, 0, 0

    def __call__(self, uc: Any, va: int, access: int, entry: Any, _data: Any) -> bool:  # named as the hook it replaces
        ok = self.inner(uc, va, access, entry, _data)
        vcpu, paddr = self.machine.engine.current, entry.contents.paddr
        if ok and vcpu is not None and paddr >= POOL_BASE:
            self.fills += 1
            if (paddr - POOL_BASE) // PAGE not in vcpu.guest.memory.p2m:
                self.escapes += 1
        return bool(ok)


def fuzz(streams: int, seed: int = 0, fuzz_guests: int = 3, budget: int = 2000,
         weak_bounds: bool = False) -> dict[str, int]:
    """Run ``streams`` random streams; raises AssertionError on any isolation failure."""
    rng = random.Random(seed)
    machine = Machine(scheduler=RoundRobin(slice_ms=0.2), chunk=budget, weak_bounds=weak_bounds)
    audit = FillAudit(machine)
    machine.engine._on_tlb_fill = audit  # type: ignore[method-assign]  # before any guest installs it
    outcomes: Counter[str] = Counter()
    try:
        sentinel = machine.add_guest("hello", name="sentinel")
        machine.run(ms=1)
        assert sentinel.state is GuestState.HALTED
        sentinel_sum = hashlib.sha256(sentinel.memory.read(RAM_BASE, sentinel.memory.size) or b"").hexdigest()
        canary = machine.add_guest("compute", name="canary")
        fuzzers = [machine.add_guest(HARNESS, name=f"fuzz{i}", ram=64 * 1024) for i in range(fuzz_guests)]
        done = 0
        while done < streams:
            for guest in fuzzers:
                words = b"".join(random_word(rng).to_bytes(4, "little") for _ in range(STREAM_WORDS))
                guest.reboot(HARNESS + words)
                guest.memory.write(REGTABLE, random_registers(rng))
            before = canary.mailbox()
            machine.run(until=machine.now + (fuzz_guests + 1) * budget)
            assert canary.mailbox() > before, "the VMM stopped serving the innocent guest"
            for guest in fuzzers:
                outcomes[guest.state.value] += 1
            done += fuzz_guests
        assert audit.escapes == 0, f"{audit.escapes} TLB fills mapped another guest's frame"
        after = hashlib.sha256(sentinel.memory.read(RAM_BASE, sentinel.memory.size) or b"").hexdigest()
        assert after == sentinel_sum, "a halted guest's memory changed"
        host = machine.host
        zero = bytes(PAGE)
        assert all(host.page(f) == zero for f in range(host.frames) if host.refs[f] == 0), \
            "a free host frame was written"
        assert canary.state is GuestState.RUNNING and canary.uart.text == "compute: running\n"
        return {"streams": done, **outcomes, "violations": len(machine.violations),
                "audited_fills": audit.fills, "exits": sum(machine.exit_counts().values())}
    finally:
        machine.close()
