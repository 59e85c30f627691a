"""Assembling guest code with the real RISC-V toolchain (Debian's riscv64 binutils).

:func:`assemble` runs ``riscv64-unknown-elf-as``, ``-ld`` and ``-objcopy`` in a temporary
directory (removed afterwards) and returns a flat binary linked to run at :data:`RAM_BASE`.
Compressed instructions are disabled (``-march=rv64ima_zicsr``) so every instruction is 4
bytes: the VMM relies on that when it steps over a trapping instruction.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vlab.errors import VlabError

__all__ = ["RAM_BASE", "TOOL_PREFIX", "assemble"]

#: Guest-physical address where guest RAM (and every program) starts.
RAM_BASE = 0x8000_0000
#: Prefix of the binutils commands.
TOOL_PREFIX = "riscv64-unknown-elf-"
_INSTALL_FIX = "sudo apt-get install binutils-riscv64-unknown-elf"


def _tool(name: str) -> str:
    path = shutil.which(TOOL_PREFIX + name)
    if path is None:
        raise VlabError(f"the RISC-V assembler tool {TOOL_PREFIX + name} is not installed", field="toolchain",
                        value=TOOL_PREFIX + name, fix=_INSTALL_FIX)
    return path


def _run(argv: Sequence[str], what: str, source_name: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VlabError(f"the RISC-V {what} rejected the program", field="source", value=source_name,
                        fix="correct the line named in the message below",
                        detail=(result.stderr or result.stdout).strip())


def assemble(source: str, *, base: int = RAM_BASE, include_dirs: Sequence[Path] = (), name: str = "snippet.S") -> bytes:
    """Assemble RISC-V source text into a flat binary that runs at ``base``.

    :param source: GNU ``as`` syntax; ``.include`` files are searched in ``include_dirs``.
    :param base: the address of the first byte (the link address of ``.text``).
    :param include_dirs: directories for ``.include`` (e.g. ``vm-images/toyvmm``).
    :param name: the file name reported in error messages.
    :raises VlabError: the toolchain is missing, or the assembler/linker rejected the source.
    """
    as_, ld, objcopy = _tool("as"), _tool("ld"), _tool("objcopy")
    with tempfile.TemporaryDirectory(prefix="vlab-asm-") as tmp:
        work = Path(tmp)
        src, obj, elf, flat = work / name, work / "prog.o", work / "prog.elf", work / "prog.bin"
        src.write_text(source if source.endswith("\n") else source + "\n")
        includes = [f"-I{d}" for d in include_dirs]
        _run([as_, "-march=rv64ima_zicsr", *includes, "-o", str(obj), str(src)], "assembler", name)
        _run([ld, "-nostdlib", f"-Ttext={base:#x}", "-e", f"{base:#x}", "-o", str(elf), str(obj)],
             "linker", name)
        _run([objcopy, "-O", "binary", str(elf), str(flat)], "objcopy step", name)
        return flat.read_bytes()
