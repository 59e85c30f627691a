"""Where vlab keeps things outside git: the image cache and run-time state.

``VLAB_IMAGES`` overrides the image cache (default ``~/.cache/vlab/images``);
``VLAB_RUNTIME`` overrides the directory for sockets and pidfiles (default
``$XDG_RUNTIME_DIR/vlab`` or ``/tmp/vlab-<uid>``), kept short because UNIX
socket paths must stay under 108 bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["images_dir", "runtime_dir", "repo_root", "vm_images_src"]


def images_dir() -> Path:
    """The guest-image cache directory (not created here)."""
    env = os.environ.get("VLAB_IMAGES")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlab" / "images"


def runtime_dir() -> Path:
    """A short, private directory for sockets and pidfiles (created, mode 0700)."""
    env = os.environ.get("VLAB_RUNTIME")
    if env:
        path = Path(env)
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        path = Path(xdg) / "vlab" if xdg and len(xdg) < 40 else Path(f"/tmp/vlab-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    """The source checkout holding ``vm-images/`` and ``labs/``."""
    return Path(__file__).resolve().parent.parent


def vm_images_src() -> Path:
    """The ``vm-images/`` directory: recipes and guest-program sources."""
    return repo_root() / "vm-images"
