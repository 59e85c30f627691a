"""``vlab doctor``: findings, JSON, and a non-zero exit only when a required part is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vlab.doctor import Finding, failed, run_checks


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
