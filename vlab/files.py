"""Writing files safely: the one way vlab writes a file that anyone else may read at the same time.

:func:`write_atomic` writes a temp file next to the target (created with ``O_EXCL``, so never through a
planted symlink), fsyncs it, sets its mode and renames it over the target. A reader sees the old file or
the new one, never half of either; a symlink at the target is replaced, not followed; a crash leaves at
most a ``.<name>.*.tmp`` file next to the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "TEMP_SUFFIX"]

#: Suffix of write_atomic's temp files (so leftovers can be recognised).
TEMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` in one step; returns the path.

    :param mode: the file's permissions (``0o600`` for secrets: the file never exists with wider ones).
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
