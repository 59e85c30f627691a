"""Fixtures shared by the labs' tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vlab.labs import isolation


@pytest.fixture
def no_unshare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A host without unshare(1), as the namespace probe sees Binder: PATH holds every program but it."""
    bin_dir = tmp_path / "bin-without-unshare"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for program in Path(directory).iterdir():
            if program.name != "unshare" and not (bin_dir / program.name).exists():
                (bin_dir / program.name).symlink_to(program)
    monkeypatch.setenv("PATH", str(bin_dir))
    isolation._namespaces.cache_clear()  # lab 05 probes once per process (a notebook's host does not change)
    yield
    isolation._namespaces.cache_clear()
