"""The guest programs under ``vm-images/toyvmm/`` and where their binaries come from.

The image build (``vlab images build``) calls :func:`build_all` to write flat binaries into the
image cache; :func:`load_program` uses a cached binary when it is at least as new as its
sources and otherwise assembles from source, so tests never depend on the cache.
"""

from __future__ import annotations

from pathlib import Path

from vlab.errors import VlabError
from vlab.images.manifest import write_atomic
from vlab.paths import images_dir, vm_images_src
from vlab.toyvmm.asm import assemble

__all__ = ["PROGRAMS", "source_dir", "cache_dir", "build_all", "load_program"]

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


def _build(name: str) -> bytes:
    path = _source(name)
    return assemble(path.read_text(), include_dirs=[source_dir()], name=path.name)


def build_all(out_dir: Path) -> dict[str, Path]:
    """Assemble every program into ``out_dir/<name>.bin`` (written to a temp file, then renamed).

    :returns: program name -> path of its flat binary.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for name in PROGRAMS:
        built[name] = out_dir / f"{name}.bin"
        write_atomic(built[name], _build(name))
    return built


def load_program(name: str, *, cache: Path | None = None) -> bytes:
    """The flat binary of a guest program: from the image cache if fresh, else assembled now."""
    source = _source(name)
    cached = (cache or cache_dir()) / f"{name}.bin"
    newest_source = max(source.stat().st_mtime, (source_dir() / _KERNEL).stat().st_mtime)
    if cached.is_file() and cached.stat().st_mtime >= newest_source:
        return cached.read_bytes()
    return _build(name)
