"""The manifest round-trips, notices changed or missing files, and rejects garbage clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.images.manifest import MANIFEST_NAME, FileEntry, Manifest, sha256_file


def built(tmp_path: Path) -> Manifest:
    (tmp_path / "vmlinuz").write_bytes(b"kernel" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "prog.bin").write_bytes(b"\x13\x00\x00\x00")
    files = {n: FileEntry.of(tmp_path, n) for n in ("vmlinuz", "sub/prog.bin")}
    manifest = Manifest("key1", files, {"linux-image-x": "1.0"}, {"modules": ["virtio"]})
    manifest.save(tmp_path)
    return manifest


def test_round_trip_and_clean_verify(tmp_path: Path) -> None:
    manifest = built(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest
    assert loaded.problems(tmp_path) == []
    assert loaded.files["vmlinuz"].sha256 == sha256_file(tmp_path / "vmlinuz")


def test_changed_same_size_file_fails_the_checksum(tmp_path: Path) -> None:
    built(tmp_path)
    (tmp_path / "sub" / "prog.bin").write_bytes(b"\x73\x00\x00\x00")
    loaded = Manifest.load(tmp_path)
    assert loaded is not None
    assert loaded.problems(tmp_path) == ["sub/prog.bin: sha256 does not match the manifest"]


def test_missing_and_resized_files_are_named(tmp_path: Path) -> None:
    built(tmp_path)
    (tmp_path / "vmlinuz").write_bytes(b"short")
    (tmp_path / "sub" / "prog.bin").unlink()
    loaded = Manifest.load(tmp_path)
    assert loaded is not None
    problems = loaded.problems(tmp_path)
    assert sorted(problems) == ["sub/prog.bin: missing", "vmlinuz: size 5 != 600 in the manifest"]


def test_no_manifest_is_none_and_garbage_is_a_vlab_error(tmp_path: Path) -> None:
    assert Manifest.load(tmp_path) is None
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(VlabError, match="vlab images build --force"):
        Manifest.load(tmp_path)
