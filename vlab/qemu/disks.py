"""Disk images with ``qemu-img``: plain or LUKS-encrypted qcow2, and throwaway overlays.

An *overlay* is a qcow2 file whose backing file is the base image: reads of
untouched clusters go to the base, every write lands in the overlay, so the base
can stay read-only and be shared (and a VM's changes vanish with its overlay).

An *encrypted* image is qcow2 with LUKS inside (``encrypt.format=luks``): the
host sees only ciphertext in the file, and QEMU decrypts with a key given as a
``secret`` object, here read from a file in the VM's private workdir rather
than written on the command line where ``ps`` would show it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from vlab.errors import VlabError
from vlab.qemu.config import Disk, parse_size_mib

__all__ = ["create_image", "create_overlay", "image_info", "write_secret_file"]

QEMU_IMG = "qemu-img"
_LUKS_ATTEMPTS = 10


def _qemu_img(*args: str) -> str:
    try:
        done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise VlabError("qemu-img is not installed", field="qemu-img", fix="apt-get install qemu-utils") from None
    if done.returncode != 0:
        raise VlabError(f"qemu-img {args[0]} failed", field="qemu-img", value=" ".join(args),
                        fix="check the paths and sizes", detail=done.stderr.strip())
    return done.stdout


def create_image(path: str | os.PathLike[str], size: str | int, *, secret: str | None = None,
                 iter_time_ms: int = 200) -> Path:
    """Create an empty qcow2 image of ``size`` (``"64M"``, ``"1G"``, or MiB); LUKS-encrypted if ``secret``.

    The file is written under a temporary name and renamed, so a failure leaves nothing half-made.

    :param iter_time_ms: how long LUKS key derivation should take (QEMU's default is 2000 ms, paid again
        at every VM start; a lab image needs to show encryption, not resist a brute-force attack).
    """
    target = Path(path)
    mib = parse_size_mib(size, field_name="size")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    args = ["create", "-q", "-f", "qcow2"]
    if secret is not None:
        args += ["--object", f"secret,id=sec0,data={secret}",
                 "-o", f"encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={iter_time_ms}"]
    try:
        for attempt in range(_LUKS_ATTEMPTS):
            try:
                _qemu_img(*args, str(tmp), f"{mib}M")
                break
            except VlabError as exc:
                # qemu-img (7.2) times a first PBKDF round with thread CPU time and gives up when it reads 0 ms,
                # which with tick-based accounting happened to about half the attempts on the 2-core VM
                if "accurate CPU usage" not in (exc.detail or "") or attempt == _LUKS_ATTEMPTS - 1:
                    raise
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def create_overlay(base: Path, overlay: Path) -> Path:
    """Create ``overlay`` (qcow2) backed by ``base``, which QEMU will only read."""
    fmt = Disk(base, overlay=False).format
    _qemu_img("create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base.resolve()), str(overlay))
    return overlay


def image_info(path: str | os.PathLike[str]) -> dict[str, object]:
    """``qemu-img info`` as a dict (format, virtual size, backing file, encryption…)."""
    info: dict[str, object] = json.loads(_qemu_img("info", "-U", "--output=json", str(path)))
    return info


def write_secret_file(path: Path, secret: str) -> Path:
    """Write a passphrase to a file only the owner can read (QEMU's ``secret,file=``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return path
