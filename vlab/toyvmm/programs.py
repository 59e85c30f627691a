"""The guest programs under ``vm-images/toyvmm/`` and where their binaries come from.

The image build (``vlab images build``) calls :func:`build_all` to write flat binaries into the
image cache; :func:`load_program` uses a cached binary when it is at least as new as its
sources and otherwise assembles from source, so tests never depend on the cache.

The labs' own guests are assembled here too, so every guest is built one way:
:func:`kernel_program` puts the shared guest kernel (``kernel.inc``) before a lab's ``main``, and
:func:`build_program` builds a variant of a ``.S`` program by setting the knobs it leaves open.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlab.errors import VlabError
from vlab.files import write_atomic  # not via vlab.images: its build imports this module, one way only
from vlab.paths import images_dir, vm_images_src
from vlab.toyvmm.asm import assemble

__all__ = [
    "PROGRAMS",
    "build_all",
    "build_program",
    "cache_dir",
    "kernel_program",
    "load_program",
    "program_source",
    "source_dir",
]

#: Program name -> what it demonstrates.
PROGRAMS: dict[str, str] = {
    "hello": "prints a greeting per vCPU through the UART, then shuts down",
    "compute": "CPU-bound loop that never traps (scheduler shares, throughput)",
    "memdirty": "Sv39 paging, U-mode loop dirtying 64 pages, satp reload per round (shadow vs nested)",
    "hypercalls": "hypercall-heavy loop (trap cost)",
    "sleeper": "a little work, then sleeps on the virtual timer (wake latency, BOOST)",
    "attacker": "probes memory outside its RAM and asks the VMM to print beyond it (isolation)",
}
_KERNEL = "kernel.inc"


def source_dir() -> Path:
    """The directory holding the guest sources (``vm-images/toyvmm``)."""
    return vm_images_src() / "toyvmm"


def cache_dir() -> Path:
    """Where :func:`build_all` output is looked up by default (``<images>/toyvmm``)."""
    return images_dir() / "toyvmm"


def _source(name: str) -> Path:
    if name not in PROGRAMS:
        raise VlabError("unknown toyvmm guest program", field="program", value=name,
                        fix=f"use one of: {', '.join(PROGRAMS)}")
    return source_dir() / f"{name}.S"


def program_source(name: str) -> str:
    """The assembly source of guest program ``name`` (``vm-images/toyvmm/<name>.S``)."""
    return _source(name).read_text()


def build_program(name: str, **knobs: int) -> bytes:
    """Assemble guest program ``name``, with some of the knobs its source leaves open set.

    A knob is a symbol the ``.S`` file defines only ``.ifndef`` (memdirty.S: ``PAGES``, ``ROUNDS``
    ...); each one given here is defined first, so one source serves the image and the labs.

    :raises VlabError: ``name`` is not a program, or it has no such knob.
    """
    path = _source(name)
    source = path.read_text()
    for knob in knobs:
        if not re.search(rf"^\s*\.ifndef\s+{re.escape(knob)}\s*$", source, re.MULTILINE):
            raise VlabError(f"{path.name} has no knob {knob}", field="knob", value=knob,
                            fix=f"use a symbol that {path.name} defines under .ifndef")
    defines = "".join(f"        .equ {knob}, {value}\n" for knob, value in knobs.items())
    return assemble(defines + source, include_dirs=[source_dir()], name=path.name)


def kernel_program(main: str, name: str = "guest.S") -> bytes:
    """Assemble a guest program: the toy guest kernel (``kernel.inc``) followed by ``main``.

    ``main`` defines the label ``main``, which runs in the guest's (virtual) S-mode with ``a0`` =
    hart id; returning from it shuts the guest down. The kernel's constants (``MAILBOX``, ``HC_*``,
    ``SYS_*``), macro ``HYPERCALL`` and routines (``uart_puts``, ``enable_paging`` ...) are available.

    :param name: the file name the assembler's error messages give.
    """
    return assemble(f'        .include "{_KERNEL}"\n' + main, include_dirs=[source_dir()], name=name)


def build_all(out_dir: Path) -> dict[str, Path]:
    """Assemble every program into ``out_dir/<name>.bin`` (written to a temp file, then renamed).

    :returns: program name -> path of its flat binary.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for name in PROGRAMS:
        built[name] = out_dir / f"{name}.bin"
        write_atomic(built[name], build_program(name))
    return built


def load_program(name: str, *, cache: Path | None = None) -> bytes:
    """The flat binary of a guest program: from the image cache if fresh, else assembled now."""
    source = _source(name)
    cached = (cache or cache_dir()) / f"{name}.bin"
    newest_source = max(source.stat().st_mtime, (source_dir() / _KERNEL).stat().st_mtime)
    if cached.is_file() and cached.stat().st_mtime >= newest_source:
        return cached.read_bytes()
    return build_program(name)
