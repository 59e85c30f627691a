"""``vlab doctor``: findings, JSON, and a non-zero exit only when a required part is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlab import doctor
from vlab.doctor import Finding, failed, run_checks
from vlab.host import packages


def run_doctor(*args: str, env_images: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if env_images is not None:
        import os

        env = {**os.environ, "VLAB_IMAGES": str(env_images)}
    return subprocess.run(
        [sys.executable, "-m", "vlab", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_every_check_reports_and_missing_ones_carry_a_fix() -> None:
    findings = run_checks()
    assert [f.name for f in findings] == [
        "qemu",
        "accelerator",
        "images",
        "riscv-assembler",
        "cgroups",
        "namespaces",
        "memory",
        "python",
    ]
    assert all(f.fix for f in findings if f.status == "missing")


def test_only_required_missing_parts_fail() -> None:
    optional = Finding("cgroups", "missing", "none", required=False, fix="x")
    required = Finding("images", "missing", "none", required=True, fix="vlab images build")
    assert not failed([optional])
    assert failed([optional, required])


def test_json_output_and_exit_status_when_images_are_missing(tmp_path: Path) -> None:
    done = run_doctor("--json", env_images=tmp_path / "nothing-here")
    report = json.loads(done.stdout)
    images = next(f for f in report["findings"] if f["name"] == "images")
    assert images["status"] == "missing" and images["fix"] == "vlab images build"
    assert report["ok"] is False and done.returncode == 1


def test_text_output_names_the_accelerator_and_why() -> None:
    done = run_doctor()
    line = next(line for line in done.stdout.splitlines() if "accelerator" in line)
    assert ("tcg" in line or "kvm" in line) and ":" in line


def qemu_finding_without_qemu(monkeypatch: pytest.MonkeyPatch) -> Finding:
    monkeypatch.setattr("vlab.doctor.shutil.which", lambda name: None)
    return doctor._qemu()


def test_the_missing_qemu_fix_installs_binder_apt_txt_read_at_run_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    finding = qemu_finding_without_qemu(monkeypatch)
    assert finding.status == "missing" and finding.fix == packages.apt_install_command()
    listing = tmp_path / "apt.txt"
    listing.write_text("qemu-system-x86  # the one list\nzstd\n")
    monkeypatch.setattr(packages, "APT_TXT", listing)
    assert qemu_finding_without_qemu(monkeypatch).fix == "sudo apt-get install --no-install-recommends " \
        "qemu-system-x86 zstd"


def test_without_the_checkout_the_fix_says_where_the_list_lives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(packages, "APT_TXT", tmp_path / "no-such-apt.txt")  # as from a wheel: no binder/
    finding = qemu_finding_without_qemu(monkeypatch)
    assert finding.status == "missing" and finding.fix is not None and "binder/apt.txt" in finding.fix
