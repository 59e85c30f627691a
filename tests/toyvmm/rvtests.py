"""RISC-V conformance harness: vlab's tests on the toy VMM and on QEMU's riscv64 hart.

The tests live in ``tests/toyvmm/rvtests/`` and follow the official riscv-tests protocol
(``TESTNUM`` in ``gp``; exit code 0 = pass, ``TESTNUM << 1 | 1`` = fail) in a small S-mode
environment, ``env.h``, that fits the VMM's machine model. Suites:

* ``si`` -- supervisor behaviour, self-checking (``rvtests/si/*.S``), one file per rule;
* ``ui``, ``um``, ``ua`` -- generated here: every RV64I / M / A instruction over edge-case
  operands, each instruction's results folded into one printed checksum (differential: the
  reference decides), each in S-mode (``-s``) and in U-mode under Sv39 (``-u``).

Deliberate model choices, each shown by a test: the MMU sets A/D itself like QEMU's hart
(``si/ad_bits.S``); the counters follow ``scounteren`` in U-mode although Unicorn runs
``rdcycle``/``rdinstret`` natively (the VMM hooks them: ``si/counters.S``; QEMU's hart is given all 29
hpm counters, reading 0, as the VMM has); ``csrrs``/``csrrc`` on a counter with ``rs1`` not ``x0`` is
an illegal write attempt, as the spec says, where QEMU 7.2 traps it only for a non-zero register
(``test_counters.py``, not compared here).

A result is the exit code and the UART text. The reference is QEMU's hart behind ``shim.S``
(an M-mode shim that gives it the VMM's machine model); it is stored in ``reference.json`` so
the comparison also runs where QEMU is absent. Commands::

    .venv/bin/python -m tests.toyvmm.rvtests --table     # VMM (shadow, nested) vs the reference
    .venv/bin/python -m tests.toyvmm.rvtests --record    # re-run QEMU, rewrite reference.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from vlab.toyvmm import Machine

HERE = Path(__file__).parent / "rvtests"
REFERENCE = HERE / "reference.json"
PAGINGS = ("shadow", "nested")
_ARCH = "-march=rv64imac_zicsr_zifencei"
_TOOLS = "riscv64-unknown-elf-"
_QEMU_CPU = "rv64,h=false,f=false,d=false,v=false,pmu-num=29"
_EXIT_MARK = "\n@@exit="
_RUN_MS = 2_000  # virtual ms: far more than any test needs; a hung test ends here


class Result(NamedTuple):
    exit: int | None
    uart: str


@dataclass(frozen=True)
class Case:
    suite: str
    name: str
    source: str
    user: bool = False

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


# -- generated suites (differential) --------------------------------------------------------------
_VALUES = [0, 1, 2, 3, 31, 63, -1, -2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF,
           -0x8000_0000_0000_0000, 0x1234_5678_9ABC_DEF0, -0x1234_5678, 0x5555_5555_AAAA_AAAA]
_IMMS = [0, 1, 5, 31, 63, -1, -2048, 2047, 0x7FF, -0x800 + 3]
_SHAMTS = [0, 1, 7, 31, 32, 63]
_SHAMTS_W = [0, 1, 7, 15, 31]
_RR = {"ui": "add sub sll srl sra slt sltu xor or and addw subw sllw srlw sraw",
       "um": "mul mulh mulhsu mulhu mulw div divu rem remu divw divuw remw remuw"}
_AMO = ["amoswap", "amoadd", "amoxor", "amoand", "amoor", "amomin", "amomax", "amominu", "amomaxu"]

_PROLOGUE = """#include "env.h"
RVTEST_RV64U
RVTEST_CODE_BEGIN
        li s1, 0
"""
# s1 = running checksum: rotate left 5, xor in the result (uses only base-ISA instructions)
_FOLD = "slli t0, s1, 5; srli t1, s1, 59; or s1, t0, t1; xor s1, s1, {reg}\n"


def _print(label: str) -> str:
    return f"        la a1, msg_{label.replace('.', '_')}; jal env_puts; PRINT_REG(s1); li s1, 0\n"


def _pairs_loop(body: str, label: str) -> str:
    """``body`` (operands in s2, s3; result in s4) over every pair of :data:`_VALUES`."""
    return f"""        la s5, values; li s7, {len(_VALUES)}
1:      ld s2, 0(s5); la s6, values; li s8, {len(_VALUES)}
2:      ld s3, 0(s6)
        {body}
        {_FOLD.format(reg="s4")}        addi s6, s6, 8; addi s8, s8, -1; bnez s8, 2b
        addi s5, s5, 8; addi s7, s7, -1; bnez s7, 1b
{_print(label)}"""


def _values_loop(body: str) -> str:
    """``body`` (operand in s2; result in s4) over every value."""
    return f"""        la s5, values; li s7, {len(_VALUES)}
1:      ld s2, 0(s5)
        {body}
        {_FOLD.format(reg="s4")}        addi s5, s5, 8; addi s7, s7, -1; bnez s7, 1b
"""


def _generate(suite: str) -> str:
    out, labels = [_PROLOGUE], []

    def emit(label: str, code: str) -> None:
        labels.append(label)
        out.append(code)

    for op in _RR.get(suite, "").split():
        emit(op, _pairs_loop(f"{op} s4, s2, s3", op))
    if suite == "ui":
        for op, imms in (("addi", _IMMS), ("slti", _IMMS), ("sltiu", _IMMS), ("xori", _IMMS), ("ori", _IMMS),
                         ("andi", _IMMS), ("addiw", _IMMS), ("slli", _SHAMTS), ("srli", _SHAMTS),
                         ("srai", _SHAMTS), ("slliw", _SHAMTS_W), ("srliw", _SHAMTS_W), ("sraiw", _SHAMTS_W)):
            emit(op, "".join(_values_loop(f"{op} s4, s2, {imm}") for imm in imms) + _print(op))
        for branch in ("beq", "bne", "blt", "bge", "bltu", "bgeu"):
            emit(branch, _pairs_loop(f"li s4, 0; {branch} s2, s3, 3f; li s4, 1; 3:", branch))
        emit("lui", "".join(f"lui s4, {imm}; {_FOLD.format(reg='s4')}"
                            for imm in (0, 1, 0x7FFFF, 0x80000, 0xFFFFF, 0x12345)) + _print("lui"))
        emit("auipc", "la t2, 4f; 4: auipc s4, 0; sub s4, s4, t2; " + _FOLD.format(reg="s4")
             + "la t2, 5f; 5: auipc s4, 0x7ffff; sub s4, s4, t2; " + _FOLD.format(reg="s4") + _print("auipc"))
        emit("jal_jalr", "la t2, 6f; jal s4, 6f; 6: sub s4, s4, t2; " + _FOLD.format(reg="s4")
             + "la t2, 7f; la t3, 8f; jalr s4, 0(t3); 7: nop; 8: sub s4, s4, t2; " + _FOLD.format(reg="s4")
             + "la t3, 9f + 1; jalr s4, -1(t3); 9: " + _FOLD.format(reg="s7") + _print("jal_jalr"))
        for load in ("lb", "lbu", "lh", "lhu", "lw", "lwu", "ld"):
            width = {"b": 1, "h": 2, "w": 4, "d": 8}[load[1]]
            emit(load, "la s5, values; li s7, 16\n1: "
                 + "".join(f"{load} s4, {off}(s5); {_FOLD.format(reg='s4')}" for off in range(0, 8, width))
                 + "addi s5, s5, 8; addi s7, s7, -1; bnez s7, 1b\n" + _print(load))
        for store in ("sb", "sh", "sw", "sd"):
            width = {"b": 1, "h": 2, "w": 4, "d": 8}[store[1]]
            emit(store, _values_loop("la t2, scratch; sd x0, 0(t2); sd x0, 8(t2); "
                                     + "".join(f"{store} s2, {off}(t2); " for off in range(0, 8, width * 2))
                                     + "ld s4, 0(t2); ld t3, 8(t2); xor s4, s4, t3") + _print(store))
    if suite == "ua":
        for amo in _AMO:
            for size in ("w", "d"):
                emit(f"{amo}.{size}", _pairs_loop(
                    f"la t2, scratch; sd s2, 0(t2); {amo}.{size} s4, s3, (t2); ld t3, 0(t2); "
                    f"{_FOLD.format(reg='t3')}", f"{amo}.{size}"))
        emit("lr_sc", "la t2, scratch; li t3, 5; sd t3, 0(t2)\n"
             "lr.d s4, (t2); " + _FOLD.format(reg="s4") + "li t3, 9; sc.d s4, t3, (t2); "
             + _FOLD.format(reg="s4") + "sc.d s4, t3, (t2); snez s4, s4; " + _FOLD.format(reg="s4")
             + "ld s4, 0(t2); " + _FOLD.format(reg="s4")
             + "lr.w s4, (t2); " + _FOLD.format(reg="s4") + "li t3, -7; sc.w s4, t3, (t2); "
             + _FOLD.format(reg="s4") + "ld s4, 0(t2); " + _FOLD.format(reg="s4") + _print("lr_sc"))
    out.append("        RVTEST_PASS\nRVTEST_CODE_END\nRVTEST_DATA_BEGIN\n        .align 3\nvalues:\n")
    out += [f"        .dword {v & ((1 << 64) - 1):#x}\n" for v in _VALUES]
    out.append("scratch: .dword 0, 0\n")
    out += [f'msg_{label.replace(".", "_")}: .asciz "{label} "\n' for label in labels]
    out.append("RVTEST_DATA_END\n")
    return "".join(out)


def cases(suites: Iterable[str] | None = None) -> list[Case]:
    """Every conformance case (in a stable order), optionally only those of ``suites``."""
    found: list[Case] = []
    for suite in ("ui", "um", "ua"):
        source = _generate(suite)
        found += [Case(f"rv64{suite}-s", suite, source), Case(f"rv64{suite}-u", suite, source, user=True)]
    found += [Case("rv64si", path.stem, path.read_text()) for path in sorted((HERE / "si").glob("*.S"))]
    wanted = set(suites) if suites is not None else None
    return [c for c in found if wanted is None or c.suite in wanted]


# -- building -----------------------------------------------------------------------------------
def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{what} failed: {' '.join(argv)}\n{done.stderr}{done.stdout}")
    return done.stdout


def build(case: Case, work: Path) -> tuple[bytes, Path]:
    """Preprocess (host ``cpp``), assemble and link ``case`` once: (its flat binary for the VMM, the
    same image as an ELF for QEMU)."""
    stem = work / f"{case.suite}-{case.name}"
    src, asm, obj, elf, flat = (stem.with_suffix(ext) for ext in (".S", ".s", ".o", ".elf", ".bin"))
    src.write_text(case.source)
    defines = ["-DENV_USER"] if case.user else []
    asm.write_text(_run(["cpp", "-x", "assembler-with-cpp", "-P", f"-I{HERE}", *defines, str(src)], "cpp"))
    _run([f"{_TOOLS}as", _ARCH, "-o", str(obj), str(asm)], "as")
    _run([f"{_TOOLS}ld", "-N", "-nostdlib", "--no-warn-rwx-segments", "-Ttext=0x80000000", "-e", "_start",
          "-o", str(elf), str(obj)], "ld")
    _run([f"{_TOOLS}objcopy", "-O", "binary", str(elf), str(flat)], "objcopy")
    return flat.read_bytes(), elf


# -- running ------------------------------------------------------------------------------------
def run_vmm(binary: bytes, paging: str = "shadow") -> Result:
    """Run one test on the toy VMM until it shuts down (or :data:`_RUN_MS` virtual ms pass)."""
    with Machine(paging=paging) as machine:
        guest = machine.add_guest(binary, name="rvtest")
        machine.run(ms=_RUN_MS)
        return Result(guest.exit_code, guest.uart.text)


def _shim_image(work: Path) -> Path:
    image = work / "shim.img"
    if not image.exists():
        obj, elf, flat = work / "shim.o", work / "shim.elf", work / "shim.bin"
        _run([f"{_TOOLS}as", "-march=rv64imac_zicsr", "-o", str(obj), str(HERE / "shim.S")], "as")
        _run([f"{_TOOLS}ld", "-nostdlib", "-Ttext=0x20000000", "-o", str(elf), str(obj)], "ld")
        _run([f"{_TOOLS}objcopy", "-O", "binary", str(elf), str(flat)], "objcopy")
        with flat.open("rb") as src, image.open("wb") as dst:
            dst.write(src.read())
            dst.truncate(32 << 20)  # the virt machine's flash bank size
    return image


def run_qemu(elf: Path, work: Path) -> Result:
    """Run one test on QEMU's riscv64 ``virt`` hart behind the shim (flash at reset, M-mode)."""
    serial = work / f"{elf.stem}.serial"
    argv = ["qemu-system-riscv64", "-M", "virt", "-cpu", _QEMU_CPU, "-smp", "1", "-m", "128M", "-bios", "none",
            "-display", "none", "-monitor", "none", "-serial", f"file:{serial}", "-drive",
            f"if=pflash,unit=0,format=raw,readonly=on,file={_shim_image(work)}", "-kernel", str(elf)]
    try:
        subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:  # subprocess.run killed it
        return Result(None, serial.read_text(errors="replace") if serial.exists() else "")
    text = serial.read_text(errors="replace")
    body, mark, code = text.rpartition(_EXIT_MARK)
    if not mark:
        return Result(None, text)
    return Result(int(code.strip(), 16), body)


@dataclass
class Outcome:
    case: Case
    reference: Result | None
    got: dict[str, Result]

    def checks(self) -> list[tuple[str, bool]]:
        """(check, passed) pairs: one per printed line of a differential test (an instruction's
        checksum) plus the exit code; one per self-checking test. A check passes when it equals
        the reference in every paging mode."""
        if self.reference is None:
            return [(self.case.name, False)]
        results = list(self.got.values())
        if self.case.suite == "rv64si":
            return [(self.case.name, all(r == self.reference for r in results))]
        want = self.reference.uart.splitlines()
        lines = [(line.split(" ")[0], all(r.uart.splitlines()[i:i + 1] == [line] for r in results))
                 for i, line in enumerate(want)]
        return [*lines, ("exit", all(r.exit == self.reference.exit for r in results))]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks())


def load_reference() -> dict[str, Result]:
    if not REFERENCE.exists():
        return {}
    return {k: Result(v["exit"], v["uart"]) for k, v in json.loads(REFERENCE.read_text()).items()}


def record(selected: list[Case]) -> dict[str, Result]:
    """Run ``selected`` on QEMU and merge the results into ``reference.json``."""
    if shutil.which("qemu-system-riscv64") is None:
        raise SystemExit("qemu-system-riscv64 is not installed (Debian: qemu-system-misc)")
    results = load_reference()
    with tempfile.TemporaryDirectory(prefix="vlab-rvtests-") as tmp:
        for case in selected:
            _, elf = build(case, Path(tmp))
            results[case.id] = run_qemu(elf, Path(tmp))
    data = {k: {"exit": r.exit, "uart": r.uart} for k, r in sorted(results.items())}
    REFERENCE.write_text(json.dumps(data, indent=1) + "\n")
    return results


def compare(selected: list[Case], pagings: Iterable[str] = PAGINGS) -> Iterator[Outcome]:
    reference = load_reference()
    with tempfile.TemporaryDirectory(prefix="vlab-rvtests-") as tmp:
        for case in selected:
            flat, _ = build(case, Path(tmp))
            yield Outcome(case, reference.get(case.id), {p: run_vmm(flat, p) for p in pagings})


def table(outcomes: list[Outcome]) -> str:
    """Suite -> passed/total checks, and the failing ones."""
    suites: dict[str, list[tuple[str, bool]]] = {}
    for outcome in outcomes:
        suites.setdefault(outcome.case.suite, []).extend(outcome.checks())
    lines = [f"{'suite':<10} passed/total  failing"]
    for suite, checks in suites.items():
        failing = [name for name, ok in checks if not ok]
        lines.append(f"{suite:<10} {len(checks) - len(failing):>6}/{len(checks):<5}  {' '.join(failing)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true", help="re-run QEMU and rewrite reference.json")
    parser.add_argument("--table", action="store_true", help="compare the VMM with the reference")
    parser.add_argument("--verbose", action="store_true", help="print each difference")
    parser.add_argument("suites", nargs="*", help="only these suites (e.g. rv64si rv64ui-s)")
    args = parser.parse_args(argv)
    selected = cases(args.suites or None)
    if args.record:
        record(selected)
    outcomes = list(compare(selected))
    if args.verbose:
        for o in outcomes:
            if not o.passed:
                print(f"--- {o.case.id}\n  reference: {o.reference}\n" + "".join(
                    f"  {paging}: {got}\n" for paging, got in o.got.items()))
    print(table(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
