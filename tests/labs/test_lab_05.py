"""Lab 05 notebook: the committed student version is current, and grading gives 100 % / 0 %.

Grading runs the notebooks as a throw-away uid when the grader is root, so this also covers the lab's
unprivileged path: a rootless container, no cgroup limits, no bridges (one VM instead of three).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vlab.grading.testing import assert_lab_grades

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "05-isolation.ipynb"

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def _lab_vms() -> list[str]:
    done = subprocess.run(["pgrep", "-af", "qemu-system.*-name (alpha|beta|gamma)"], capture_output=True, text=True)
    return done.stdout.splitlines()


def test_lab_05_grading_leaves_no_lab_vm_behind() -> None:
    # a lab-05 specific check; the points and questions are tested for every lab in test_labs.py
    assert_lab_grades(SOURCE)
    assert not _lab_vms(), "a lab VM outlived the grading runs"
