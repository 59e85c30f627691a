"""Templates of older images go away: building a template removes those whose kernel or initramfs changed since
(their keys can never match again), and ``vlab images prune`` does it on demand. Entries that cannot be judged
safely (symlinks, another user's, a symlinked meta.json, one whose lock is held) are left alone."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.template_cache import private_template_cache
from vlab.qemu import VMConfig, template

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture
def cache(tmp_path: Path, guest_images: tuple[Path, Path]) -> Iterator[Path]:
    with private_template_cache(tmp_path / "templates") as root:
        yield root


def _copy(source: Path, cache: Path, name: str, **sources: str) -> Path:
    """A copy of template ``source`` under key ``name`` whose meta.json names other source files."""
    copy = cache / name
    shutil.copytree(source, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["sources"].update(sources)
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


def test_a_rebuilt_initramfs_prunes_the_old_template_and_nothing_else(cache: Path, guest_images: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    _, initrd = guest_images
    ours = tmp_path / "initramfs.cpio.gz"
    unchanged = tmp_path / "unchanged.cpio.gz"
    shutil.copy(initrd, ours)
    shutil.copy(initrd, unchanged)
    config = VMConfig(accel="tcg", initrd=ours)
    old, note = template.ensure(config, "tcg")
    assert note == "built the template (first use)"

    kept = _copy(old.directory, cache, "a" * 32, initrd=str(unchanged))  # its sources did not change: kept
    zero = _copy(old.directory, cache, "b" * 32, initrd="/dev/zero")      # judged without reading it forever
    outside = tmp_path / "outside"                                       # a symlink to a stale template
    shutil.copytree(old.directory, outside)
    (cache / ("c" * 32)).symlink_to(outside)
    linked_meta = _copy(old.directory, cache, "d" * 32)                  # its meta.json is a symlink
    (linked_meta / "meta.json").unlink()
    (linked_meta / "meta.json").symlink_to(old.directory / "meta.json")
    held = _copy(old.directory, cache, "e" * 32)                         # being built by someone: skipped
    lock = os.open(cache / f".{'e' * 32}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    foreign = None
    if os.geteuid() == 0:
        foreign = _copy(old.directory, cache, "f" * 32)                  # another user's: never ours to remove
        for path in [foreign, *foreign.iterdir()]:
            os.lchown(path, 4242, 4242)

    with ours.open("ab") as stream:  # a new initramfs (the kernel skips zero padding after the archive)
        stream.write(bytes(512))
    try:
        new, note = template.ensure(config, "tcg")
    finally:
        os.close(lock)

    assert "removed 2 templates of older images" in note, note  # the old one and the /dev/zero one
    assert new.directory.is_dir() and not old.directory.exists() and not zero.exists()
    assert kept.is_dir() and held.is_dir() and linked_meta.is_dir()
    assert (cache / ("c" * 32)).is_symlink() and (outside / "meta.json").is_file()
    if foreign is not None:
        assert foreign.is_dir()

    # the lock is free now: `vlab images prune` removes the held one, and only it
    done = subprocess.run([sys.executable, "-m", "vlab", "images", "prune"], capture_output=True, text=True,
                          env={**os.environ, template.TEMPLATES_ENV: str(cache)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"images prune: 1 template removed from {cache}", done.stdout
    assert not held.exists() and kept.is_dir() and new.directory.is_dir()
    assert template.find(config, "tcg") is not None
