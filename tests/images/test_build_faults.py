"""An image build in a bad place says so clearly, and a killed build's leftovers go at the next run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.images import build as build_module
from vlab.images.build import build_images

pytestmark = pytest.mark.qemu


def test_an_unwritable_image_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(VlabError) as caught:
        build_images(blocker / "images", report=lambda line: None)
    assert caught.value.field == "images" and "VLAB_IMAGES" in (caught.value.fix or "")


def test_a_killed_builds_work_directory_is_removed_by_the_next_build(tmp_path: Path) -> None:
    # a build holds the directory's lock from start to end, so a .build-* found under the lock is a dead one's;
    # the lock is taken alone here (a whole build takes minutes)
    stale = tmp_path / ".build-killed1234"
    (stale / "stage").mkdir(parents=True)
    (stale / "stage" / "vmlinuz").write_bytes(b"\0" * 4096)
    keep = tmp_path / "vmlinuz"
    keep.write_bytes(b"k")
    with build_module._locked(tmp_path):
        assert not stale.exists()
    assert keep.read_bytes() == b"k"
