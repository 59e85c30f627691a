"""Is the guest kernel (or initramfs) the file ``vlab images build`` made? Checked at every VM start.

A truncated or corrupted kernel otherwise shows up as "QEMU exited with status 0; wrote nothing" or as two
boot timeouts. A file that sits next to an image ``manifest.json`` naming it is compared with the manifest:
size always, sha256 once per (size, mtime, inode), cached for the process, so the check costs a ``stat``
after the first time. Files vlab did not build (no manifest, or not listed in it) are not checked.
"""

from __future__ import annotations

import threading
from pathlib import Path

from vlab.errors import VlabError
from vlab.images.manifest import Manifest, sha256_file

__all__ = ["verify_guest_file"]

_verified: set[tuple[str, int, int, int]] = set()
_lock = threading.Lock()
_FIX = "rebuild the guest images: vlab images build --force"


def verify_guest_file(field: str, path: Path) -> None:
    """Raise :class:`VlabError` if ``path`` differs from what its image manifest records.

    :param field: the config field the file came from (``kernel``, ``initrd``), for the message.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise VlabError(f"cannot be read ({exc.strerror})", field=field, value=str(path), fix=_FIX) from None
    key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
    with _lock:
        if key in _verified:
            return
    manifest = Manifest.load(path.parent)
    entry = manifest.files.get(path.name) if manifest is not None else None
    if entry is None:
        return  # not a file vlab built: nothing to compare with
    if info.st_size != entry.size:
        raise VlabError(f"is {info.st_size} bytes but the image manifest says {entry.size}: truncated or replaced",
                        field=field, value=str(path), fix=_FIX)
    if sha256_file(path) != entry.sha256:
        raise VlabError("does not match the sha256 in the image manifest: corrupted or replaced", field=field,
                        value=str(path), fix=_FIX)
    with _lock:
        _verified.add(key)
