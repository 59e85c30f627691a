"""Helpers for the toy VMM tests: real guests, assembled with the real RISC-V binutils."""

from __future__ import annotations

from vlab.toyvmm import assemble
from vlab.toyvmm.programs import source_dir


def kernel_program(main: str) -> bytes:
    """A guest: the shared guest kernel (kernel.inc) plus ``main`` (S-mode, a0 = hart id)."""
    return assemble('.include "kernel.inc"\nmain:\n' + main, include_dirs=[source_dir()])
