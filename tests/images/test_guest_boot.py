"""Boot the built guest with plain QEMU (no vlab.VM): the image's own contract.

The init script must print the ready marker, give a shell on ttyS0, configure
eth0 from ``vlab.ip0=`` and power off on the ACPI power button.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from vlab.images.build import INITRD_NAME, KERNEL_NAME
from vlab.paths import images_dir

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"no {marker!r} within {timeout} s; console tail:\n{seen[-2000:].decode()}")
        if select.select([proc.stdout], [], [], left)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)
    return seen


def test_guest_boots_runs_a_command_has_its_network_and_powers_off_on_acpi() -> None:
    kernel, initrd = images_dir() / KERNEL_NAME, images_dir() / INITRD_NAME
    if not kernel.exists():
        pytest.skip("guest images not built: run `vlab images build`")
    with tempfile.TemporaryDirectory(prefix="vlab-t-") as tmp:
        qmp_path = str(Path(tmp) / "qmp")
        argv = [
            "qemu-system-x86_64",
            "-M",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 quiet vlab.ip0=10.0.2.15/24 vlab.gw=10.0.2.2 vlab.hostname=probe",
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-qmp",
            f"unix:{qmp_path},server=on,wait=off",
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            read_until(proc, b"VLAB-READY", 60)
            assert proc.stdin is not None
            proc.stdin.write(b"hostname; ip -4 addr show eth0; echo done=$?\n")
            proc.stdin.flush()
            out = read_until(proc, b"done=0", 20).decode()
            assert "probe" in out and "10.0.2.15/24" in out
            qmp = QEMUMonitorProtocol(qmp_path)
            qmp.connect()
            qmp.cmd("system_powerdown")
            assert proc.wait(timeout=20) == 0  # acpid saw the power button: the guest powered itself off
            qmp.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
