"""Fixtures for the vlab.qemu tests: the built guest images (or a skip saying how to build them) and VMs.

Integration tests boot the real built guest under TCG; they are marked ``qemu`` and ``slow``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu import VM, VMConfig, default_initrd, default_kernel


@pytest.fixture(scope="session")
def guest_images() -> tuple[Path, Path]:
    """(kernel, initrd) of the built guest; skips with the fix when they are missing."""
    try:
        return default_kernel(), default_initrd()
    except VlabError as exc:
        pytest.skip(f"guest images not built ({exc.value}): run `vlab images build`")


@pytest.fixture
def config(guest_images: tuple[Path, Path]) -> VMConfig:
    """The default guest, forced to TCG so results don't depend on the host probe."""
    return VMConfig(accel="tcg")


@pytest.fixture
def vm(config: VMConfig) -> Iterator[VM]:
    """A started VM, stopped after the test whatever happened."""
    machine = VM(config)
    machine.start()
    try:
        yield machine
    finally:
        machine.kill()


@pytest.fixture(scope="module")
def shared_vm(guest_images: tuple[Path, Path]) -> Iterator[VM]:
    """One booted VM shared by a module's read-only tests (saves a boot per test)."""
    machine = VM(VMConfig(accel="tcg"))
    machine.start()
    try:
        yield machine
    finally:
        machine.kill()
