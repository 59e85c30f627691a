"""Run a command as an unprivileged user on this (root-only) test host, to test the user-namespace mode.

The Python installation lives under ``/root`` (mode 0700) here, which no other user may enter. The command
runs in a private mount namespace whose ``/root`` shows only what it needs (the Python installation and the
guest-image cache), under ``setpriv`` as ``uid`` with no capabilities -- an instructor without root.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from vlab.paths import images_dir

__all__ = ["NOBODY", "available", "unprivileged"]

NOBODY = 65534


def available() -> bool:
    """Root (to set the test up) with unshare and setpriv on the PATH."""
    return os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("setpriv"))


def _under_root() -> list[str]:
    needed = []
    for path in (Path(sys.base_prefix).resolve(), images_dir().resolve()):
        if path.is_relative_to("/root"):
            needed.append(str(path.relative_to("/root")))
    return needed


def unprivileged(argv: Sequence[str], stage: Path, uid: int = NOBODY) -> list[str]:
    """``argv`` as ``uid``; ``stage`` is an empty directory the test owns (where the new ``/root`` is built)."""
    binds = "\n".join(f'mkdir -p "{stage}/{rel}"; mount --bind "/root/{rel}" "{stage}/{rel}"' for rel in _under_root())
    script = f"""set -e
mount --make-rprivate /
chmod 755 "{stage}"
{binds}
mount --rbind "{stage}" /root
exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all "$@"
"""
    return ["unshare", "--mount", "sh", "-c", script, "sh", *argv]
