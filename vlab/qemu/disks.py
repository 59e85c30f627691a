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

import contextlib
import itertools
import json
import os
import re
import subprocess
from pathlib import Path

from vlab.errors import VlabError
from vlab.files import write_atomic
from vlab.host import procfs
from vlab.paths import runtime_dir
from vlab.qemu.config import Disk, parse_size_mib
from vlab.qemu.fields import check_int, check_passphrase, check_seconds, check_text
from vlab.qemu.process import child_setup

__all__ = ["create_image", "create_overlay", "image_info", "write_secret_file"]

QEMU_IMG = "qemu-img"
_LUKS_ATTEMPTS = 10
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)")
_KEY_RE = re.compile(r"luks(?P<pid>\d+)-\d+\.key")
_key_ids = itertools.count()


def _qemu_img(*args: str, timeout: float = 60.0) -> str:
    """Run qemu-img; it dies with this process (PDEATHSIG) and never sees a secret on its command line."""
    parent = os.getpid()
    try:
        done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: child_setup(parent), stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise VlabError("qemu-img is not installed", field="qemu-img", fix="apt-get install qemu-utils") from None
    except subprocess.TimeoutExpired:
        raise VlabError(f"qemu-img {args[0]} did not finish within {timeout} s", field="qemu-img",
                        fix="check that the disk is not busy or full") from None
    if done.returncode != 0:
        raise VlabError(f"qemu-img {args[0]} failed", field="qemu-img", value=" ".join(args)[:300],
                        fix="check the paths and sizes", detail=done.stderr.strip()[-2000:])
    return done.stdout


def create_image(path: str | os.PathLike[str], size: str | int, *, secret: str | bytes | None = None,
                 iter_time_ms: int = 200, timeout: float = 60.0) -> Path:
    """Create an empty qcow2 image of ``size`` (``"64M"``, ``"1G"``, or MiB); LUKS-encrypted if ``secret``.

    The file is written under a temporary name and renamed, so a failure leaves nothing half-made; the
    temp file of a killed earlier call (its pid is gone) is removed first. The passphrase reaches
    ``qemu-img`` through a mode-0600 file in the private runtime directory, deleted right after.

    :param iter_time_ms: how long LUKS key derivation should take (QEMU's default is 2000 ms, paid again
        at every VM start; a lab image needs to show encryption, not resist a brute-force attack).
    :param timeout: seconds qemu-img may take (per attempt).
    :raises VlabError: for a bad path, size or passphrase, an unwritable directory, or a qemu-img failure.
    """
    timeout = check_seconds("timeout", timeout)
    if not isinstance(path, (str, os.PathLike)):
        raise VlabError(f"must be a path, not {type(path).__name__}", field="path", value=repr(path)[:80],
                        fix='create_image("disk.qcow2", "64M")')
    target = Path(check_text("path", os.fspath(path), max_len=4095, fix='create_image("disk.qcow2", "64M")'))
    target = target.expanduser().absolute()  # never "json:…" or "proto:…" to qemu-img
    mib = parse_size_mib(size, field_name="size")
    if mib > 1024 * 1024:
        raise VlabError("is larger than 1 TiB", field="size", value=size, fix='size="64M"')
    iterations = check_int("iter_time_ms", iter_time_ms, 1, 60_000)
    key = check_passphrase("secret", secret) if secret is not None else None
    if not target.parent.is_dir():
        raise VlabError("its directory does not exist", field="path", value=str(target),
                        fix="create the directory first")
    _remove_dead_temps(target.parent)
    _remove_dead_key_files(runtime_dir())
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    args = ["create", "-q", "-f", "qcow2"]
    with contextlib.ExitStack() as cleanup:
        if key is not None:
            key_file = write_secret_file(runtime_dir() / f"luks{os.getpid()}-{next(_key_ids)}.key", key)
            cleanup.callback(key_file.unlink, missing_ok=True)
            args += ["--object", json.dumps({"qom-type": "secret", "id": "sec0", "file": str(key_file),
                                             "format": "raw"}),
                     "-o", f"encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={iterations}"]
        cleanup.callback(tmp.unlink, missing_ok=True)
        for attempt in range(_LUKS_ATTEMPTS):
            try:
                _qemu_img(*args, str(tmp), f"{mib}M", timeout=timeout)
                break
            except VlabError as exc:
                # qemu-img (7.2) times a first PBKDF round with thread CPU time and gives up when it reads 0 ms,
                # which with tick-based accounting happened to about half the attempts on the 2-core VM
                if "accurate CPU usage" not in (exc.detail or "") or attempt == _LUKS_ATTEMPTS - 1:
                    raise
        try:
            tmp.rename(target)
        except OSError as exc:
            raise VlabError(f"cannot create the image ({exc.strerror})", field="path", value=str(target),
                            fix="choose a writable directory with free space") from None
    return target


def _remove_dead_temps(directory: Path) -> None:
    """Temp images of a create_image whose process was killed (its pid in the name is gone)."""
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            match = _TEMP_RE.fullmatch(entry.name)
            if match and not procfs.alive(int(match["pid"])) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)


def _remove_dead_key_files(directory: Path) -> None:
    """Passphrase files of a create_image that was killed (kill -9 skips its cleanup)."""
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            match = _KEY_RE.fullmatch(entry.name)
            if match and not procfs.alive(int(match["pid"])) and not entry.is_symlink():
                entry.unlink(missing_ok=True)


def create_overlay(base: Path, overlay: Path) -> Path:
    """Create ``overlay`` (qcow2) backed by ``base``, which QEMU will only read.

    ``base`` is absolute, so qemu-img never reads a ``json:`` or protocol prefix in it; the VM opens the
    overlay with its backing node given explicitly (see :meth:`VMConfig.qemu_argv`).
    """
    disk = Disk(base, overlay=False)
    _qemu_img("create", "-q", "-f", "qcow2", "-F", disk.format, "-b", str(disk.path), str(overlay.absolute()))
    return overlay


def image_info(path: str | os.PathLike[str]) -> dict[str, object]:
    """``qemu-img info`` as a dict (format, virtual size, backing file, encryption…)."""
    image = Disk(Path(path), overlay=False)  # validated: an existing regular file, absolute, not a symlink
    info: dict[str, object] = json.loads(_qemu_img("info", "-U", "--output=json", str(image.path)))
    return info


def write_secret_file(path: Path, secret: str | bytes) -> Path:
    """Write a passphrase to a file only the owner can read (QEMU's ``secret,file=``); never a wider mode."""
    return write_atomic(path, check_passphrase("secret", secret), mode=0o600)
