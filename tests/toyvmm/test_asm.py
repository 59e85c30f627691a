from __future__ import annotations

import pytest

from vlab.errors import VlabError
from vlab.toyvmm import RAM_BASE, assemble


def test_assemble_returns_flat_binary_linked_at_ram_base() -> None:
    code = assemble("addi a0, a0, 1\nla t0, here\nhere: ecall\n")
    assert code[:4] == (0x00150513).to_bytes(4, "little")  # addi a0, a0, 1, uncompressed
    # la t0, here = auipc t0, 0 ; addi t0, t0, 8: "here" is 8 bytes past the auipc
    assert int.from_bytes(code[8:12], "little") >> 20 == 8
    assert int.from_bytes(code[12:16], "little") == 0x00000073
    assert RAM_BASE == 0x8000_0000


def test_bad_source_raises_vlab_error_with_the_assemblers_message() -> None:
    with pytest.raises(VlabError) as info:
        assemble("addi a0, a0\n", name="broken.S")
    assert "broken.S" in str(info.value)
    assert info.value.detail and "Error" in info.value.detail


def test_missing_toolchain_names_the_apt_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a machine without binutils-riscv64-unknown-elf
    with pytest.raises(VlabError) as info:
        assemble("nop\n")
    assert "apt-get install binutils-riscv64-unknown-elf" in str(info.value)
