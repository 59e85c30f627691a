"""Accelerator classification against fake /dev, /proc and /sys trees (the real host is checked too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.host.accel import AccelKind, classify, detect_accelerator


def make_host(tmp_path: Path, *, kvm_device: bool, flags: str, modules: tuple[str, ...]) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
    (tmp_path / "dev").mkdir()
    if kvm_device:
        (tmp_path / "dev" / "kvm").write_text("")
    for module in modules:
        (tmp_path / "sys" / "module" / module).mkdir(parents=True)
    return tmp_path


def test_no_dev_kvm_means_tcg_like_binder(tmp_path: Path) -> None:
    info = classify(make_host(tmp_path, kvm_device=False, flags="vmx", modules=("kvm", "kvm_intel")))
    assert info.kind is AccelKind.NONE
    assert info.accel == "tcg"
    assert "no /dev/kvm" in info.reason


def test_pvm_module_is_a_software_hypervisor_even_with_dev_kvm(tmp_path: Path) -> None:
    info = classify(make_host(tmp_path, kvm_device=True, flags="hypervisor", modules=("kvm", "kvm_pvm")))
    assert info.kind is AccelKind.SOFTWARE
    assert not info.usable_kvm
    assert "kvm_pvm" in info.reason and "TCG" in info.reason


def test_dev_kvm_without_vmx_or_svm_is_not_hardware(tmp_path: Path) -> None:
    info = classify(make_host(tmp_path, kvm_device=True, flags="hypervisor", modules=("kvm",)))
    assert info.kind is AccelKind.SOFTWARE
    assert "vmx/svm" in info.reason


@pytest.mark.parametrize(("flag", "module"), [("vmx", "kvm_intel"), ("svm", "kvm_amd")])
def test_vmx_or_svm_with_its_module_is_hardware_kvm(tmp_path: Path, flag: str, module: str) -> None:
    info = classify(make_host(tmp_path, kvm_device=True, flags=flag, modules=("kvm", module)))
    assert info.kind is AccelKind.HARDWARE
    assert info.usable_kvm and info.accel == "kvm"
    assert module in info.reason


def test_this_host_verdict_is_consistent_with_its_files() -> None:
    info = detect_accelerator(probe=False)
    if not Path("/dev/kvm").exists():
        assert info.kind is AccelKind.NONE
    elif Path("/sys/module/kvm_pvm").exists():
        assert info.kind is AccelKind.SOFTWARE and info.accel == "tcg"



def test_the_kvm_probe_boots_exactly_what_vmconfig_would() -> None:
    from vlab.host.accel import probe_argv, probe_guest
    from vlab.qemu.config import VMConfig

    argv = probe_argv()
    if argv is None:
        pytest.skip("guest images not built: run `vlab images build`")
    assert argv == VMConfig(name="kvm-probe", accel="kvm", balloon=False,
                            append="console=ttyS0 quiet").qemu_argv(accel="kvm")
    # no KVM on the test machines: the same command line under TCG must reach the ready marker
    tcg = [word if word != "kvm" else "tcg" for word in argv]
    seconds = probe_guest(tcg, timeout=60)
    assert seconds is not None and seconds > 0
