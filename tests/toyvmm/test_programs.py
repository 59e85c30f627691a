from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.toyvmm.programs import PROGRAMS, build_all, load_program


def test_build_all_writes_one_flat_binary_per_program(tmp_path: Path) -> None:
    built = build_all(tmp_path / "toyvmm")
    assert set(built) == set(PROGRAMS)
    for name, path in built.items():
        assert path.read_bytes() == load_program(name, cache=tmp_path / "nowhere")
    assert not [p for p in (tmp_path / "toyvmm").iterdir() if p.name.startswith(".")]  # no temp files


def test_load_program_prefers_a_fresh_cache_and_ignores_a_stale_one(tmp_path: Path) -> None:
    fake = b"\x13\x00\x00\x00" * 4
    (tmp_path / "hello.bin").write_bytes(fake)
    assert load_program("hello", cache=tmp_path) == fake
    os.utime(tmp_path / "hello.bin", (0, 0))  # older than the sources: rebuilt from source
    assert hashlib.sha256(load_program("hello", cache=tmp_path)).digest() != hashlib.sha256(fake).digest()


def test_unknown_program_is_a_clear_error() -> None:
    with pytest.raises(VlabError, match="unknown toyvmm guest program"):
        load_program("nope")
