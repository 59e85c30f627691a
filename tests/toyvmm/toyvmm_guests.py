"""Helpers for the toy VMM tests: real guests, assembled with the real RISC-V binutils."""

from __future__ import annotations

from vlab.toyvmm import programs


def kernel_program(main: str) -> bytes:
    """A guest: the shared guest kernel plus ``main``'s body (S-mode, a0 = hart id); the tests leave out the label."""
    return programs.kernel_program("main:\n" + main)
