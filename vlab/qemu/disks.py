"""Disk images with ``qemu-img``: plain or LUKS-encrypted qcow2, and throwaway overlays.

An *overlay* is a qcow2 file whose backing file is the base image: reads of
untouched clusters go to the base, every write lands in the overlay, so the base
can stay read-only and be shared (and a VM's changes vanish with its overlay).

An *encrypted* image is qcow2 with LUKS inside (``encrypt.format=luks``): the
host sees only ciphertext in the file, and QEMU decrypts with a key given as a
``secret`` object. vlab never puts the passphrase on a command line (``ps``
shows those) nor in a named file: it sits in a mode-0600 *memfd*, a file in no
directory, that QEMU or ``qemu-img`` inherits and reads as ``/proc/self/fd/N``.
The kernel frees it with the last process holding it, so no ``kill -9`` can
leave a passphrase behind on any filesystem.

Any bytes are a passphrase. QEMU's LUKS only takes UTF-8 text without NUL
(it refuses other bytes), so :func:`luks_passphrase` turns other bytes into such
text, one to one: that text is what another LUKS tool needs to open the image.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import subprocess
from pathlib import Path

from vlab.errors import VlabError
from vlab.host import procfs
from vlab.paths import runtime_dir
from vlab.qemu.config import Disk, parse_size_mib
from vlab.qemu.fields import check_int, check_passphrase, check_seconds, check_text
from vlab.qemu.process import child_setup

__all__ = ["create_image", "create_overlay", "image_info", "luks_passphrase", "passphrase_opens", "secret_fd",
           "secret_path", "BYTES_PREFIX"]

QEMU_IMG = "qemu-img"
_LUKS_ATTEMPTS = 10
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)")
_KEY_RE = re.compile(r"luks(?P<pid>\d+)-\d+\.key")  # passphrase files of vlab before memfds
#: Marks a passphrase that reached LUKS base64-encoded (see :func:`luks_passphrase`); DEL so nobody types it.
BYTES_PREFIX = b"\x7fvlab-base64:"
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _qemu_img(*args: str, timeout: float = 60.0, pass_fds: tuple[int, ...] = ()) -> str:
    """Run qemu-img; it dies with this process (PDEATHSIG) and never sees a secret on its command line."""
    parent = os.getpid()
    try:
        done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: child_setup(parent), stdin=subprocess.DEVNULL, pass_fds=pass_fds)
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
    ``qemu-img`` only through a memfd (:func:`secret_fd`), which dies with the last process holding it.

    :param secret: the passphrase, any bytes or text (see :func:`luks_passphrase`); None: not encrypted.
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
    fds: tuple[int, ...] = ()
    with contextlib.ExitStack() as cleanup:
        if key is not None:
            fds = (secret_fd(key),)
            cleanup.callback(os.close, fds[0])
            args += ["--object", _secret_object("sec0", fds[0]),
                     "-o", f"encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={iterations}"]
        cleanup.callback(tmp.unlink, missing_ok=True)
        for attempt in range(_LUKS_ATTEMPTS):
            try:
                _qemu_img(*args, str(tmp), f"{mib}M", timeout=timeout, pass_fds=fds)
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
    """Passphrase files a killed create_image of an older vlab left (it wrote them; this one never does)."""
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


def luks_passphrase(secret: str | bytes) -> bytes:
    """The passphrase as LUKS stores it: ``secret``'s bytes if QEMU can take them, else an encoding of them.

    QEMU's LUKS reads UTF-8 text without NUL and refuses anything else. Such text (and any ``str`` without
    NUL) is used as it is, so ``cryptsetup`` opens the image with the same passphrase. Other bytes (not UTF-8,
    or with a NUL), and the rare text that starts with :data:`BYTES_PREFIX`, become ``BYTES_PREFIX`` followed
    by their base64: one to one, so two passphrases never open the same image; for ``cryptsetup``, pipe
    ``luks_passphrase(secret)`` in as the key file.

    :raises VlabError: for a passphrase of the wrong type or length (the error never shows it).
    """
    data = check_passphrase("secret", secret)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if b"\0" not in data and not data.startswith(BYTES_PREFIX):
            return data
    return BYTES_PREFIX + base64.b64encode(data)


def secret_fd(secret: str | bytes) -> int:
    """A memfd holding :func:`luks_passphrase` of ``secret``, for a child to read as :func:`secret_path`.

    A file in no directory (nothing to plant a symlink at, nothing for a killed process to leave behind),
    mode 0600, sealed so that nobody reopening it through ``/proc`` can change what QEMU reads, close-on-exec
    unless passed on (``pass_fds``). The caller closes it.
    """
    data = luks_passphrase(secret)
    fd = os.memfd_create("vlab-secret", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def secret_path(fd: int) -> Path:
    """Where a process that inherited ``fd`` (at the same number) reads it: QEMU's ``secret,file=``."""
    return Path(f"/proc/self/fd/{int(fd)}")


def _secret_object(secret_id: str, fd: int) -> str:
    """The ``--object`` of qemu-img: raw bytes (never base64: they were encoded already, if at all)."""
    return json.dumps({"qom-type": "secret", "id": secret_id, "file": str(secret_path(fd)), "format": "raw"})


def passphrase_opens(path: str | os.PathLike[str], secret: str | bytes, timeout: float = 60.0) -> bool:
    """True if ``secret`` unlocks the LUKS image at ``path`` (qemu-img opens it; nothing is written).

    :raises VlabError: for a bad path or passphrase, or when qemu-img fails for another reason than the key.
    """
    image = Disk(Path(path), overlay=False)  # validated: an existing regular file, absolute, not a symlink
    timeout = check_seconds("timeout", timeout)
    fd = secret_fd(secret)
    try:
        # a json: filename: the path is one JSON string, never parsed for options
        spec = {"driver": image.format, "file": {"driver": "file", "filename": str(image.path)},
                "encrypt": {"key-secret": "sec0"}}
        _qemu_img("check", "-q", "-U", "--object", _secret_object("sec0", fd), "json:" + json.dumps(spec),
                  timeout=timeout, pass_fds=(fd,))
    except VlabError as exc:
        if "Invalid password" in (exc.detail or ""):
            return False
        raise
    finally:
        os.close(fd)
    return True
