"""vlab.files.write_atomic: never through a planted symlink, never a wider mode, never half a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlab.files import write_atomic


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "owner.json"
    target.symlink_to(victim)
    write_atomic(target, "new", mode=0o600)
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600


def test_bytes_any_content_and_no_temp_left(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    write_atomic(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    (tmp_path / "f.d").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "f.d", "x")  # rename over a directory fails after the temp was written
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.d"]
    if os.geteuid() != 0:  # root writes anywhere: the unwritable-directory case only means something for users
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(PermissionError):
            write_atomic(tmp_path / "ro" / "x", "x")
