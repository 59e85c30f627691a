"""Accelerator choice: TCG on request, KVM only when the host probe says it works (never assumed faster)."""

from __future__ import annotations

import pytest

from vlab.errors import VlabError
from vlab.host.accel import detect_accelerator
from vlab.qemu.accel import choose_accel


def test_tcg_on_request() -> None:
    assert choose_accel("tcg").kind == "tcg"


def test_auto_follows_the_host_probe_and_says_why() -> None:
    info = detect_accelerator()
    choice = choose_accel("auto")
    assert choice.kind == info.accel == ("kvm" if info.usable_kvm else "tcg")
    assert info.reason in choice.reason


def test_the_choice_is_derived_from_the_one_cached_host_verdict() -> None:
    assert choose_accel("auto").host is detect_accelerator() is choose_accel("auto").host
    assert choose_accel("tcg").host is None  # TCG on request needs no probe
    assert "host" not in repr(choose_accel("auto"))


def test_kvm_where_it_does_not_work_is_refused_with_a_fix() -> None:
    if detect_accelerator().usable_kvm:
        pytest.skip("hardware KVM works on this host")
    with pytest.raises(VlabError) as caught:
        choose_accel("kvm")
    assert caught.value.field == "accel" and caught.value.fix and "tcg" in caught.value.fix
