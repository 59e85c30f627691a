"""Where vlab keeps things outside git: the image cache and run-time state.

``VLAB_IMAGES`` overrides the image cache (default ``~/.cache/vlab/images``);
``VLAB_RUNTIME`` overrides the directory for sockets and pidfiles (default
``$XDG_RUNTIME_DIR/vlab`` or ``/tmp/vlab-<uid>``), kept short because UNIX
socket paths must stay under 108 bytes.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from vlab.errors import VlabError

__all__ = ["images_dir", "runtime_dir", "short_runtime_dir", "short_runtime_path", "check_private_dir", "repo_root",
           "vm_images_src"]


def images_dir() -> Path:
    """The guest-image cache directory (not created here)."""
    env = os.environ.get("VLAB_IMAGES")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlab" / "images"


def runtime_dir() -> Path:
    """A short, private directory for sockets, pidfiles and secret files, verified before every use.

    vlab kills processes and writes passphrases based on what it finds here, so it refuses a directory that
    another user could have prepared: it must be a real directory (not a symlink), owned by this user, with
    no access for group or others. ``$XDG_RUNTIME_DIR`` (per user, 0700, on tmpfs) is preferred;
    ``/tmp/vlab-<uid>`` is the fallback, and a squatter there makes vlab stop with a clear error instead.

    :raises VlabError: naming the directory, what is wrong with it and how to fix it.
    """
    env = os.environ.get("VLAB_RUNTIME")
    if env:
        return _private_dir(Path(env), "VLAB_RUNTIME")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and len(xdg) < 40:
        return _private_dir(Path(xdg) / "vlab", "XDG_RUNTIME_DIR")
    return short_runtime_dir()


def short_runtime_dir() -> Path:
    """``/tmp/vlab-<uid>``, made and verified like :func:`runtime_dir`: its fallback, and where a VM's work
    directory goes when the runtime directory is too deep for UNIX socket paths (108 bytes)."""
    return _private_dir(short_runtime_path(), "the fallback")


def short_runtime_path() -> Path:
    """The path of :func:`short_runtime_dir`, neither made nor checked."""
    return Path(f"/tmp/vlab-{os.getuid()}")


def _private_dir(path: Path, source: str) -> Path:
    """``path`` made (0700) if missing, then checked: see :func:`runtime_dir`."""
    if not path.is_absolute() or not _SAFE_PATH.fullmatch(str(path)):
        raise VlabError("the runtime directory must be an absolute path of letters, digits and '/_.-'",
                        field="runtime_dir", value=str(path)[:80], fix="export VLAB_RUNTIME=/run/user/$(id -u)/vlab")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except FileNotFoundError:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _runtime_error(path, f"cannot be created ({exc.strerror})", source) from None
    except OSError as exc:
        raise _runtime_error(path, f"cannot be created ({exc.strerror})", source) from None
    check_private_dir(path, source)
    return path


_SAFE_PATH = re.compile(r"/[A-Za-z0-9/_.-]{0,4000}")


def check_private_dir(path: Path, source: str = "VLAB_RUNTIME") -> None:
    """Refuse ``path`` unless it is a real directory owned by us with mode ``0700`` (or stricter)."""
    try:
        info = path.lstat()
    except OSError as exc:
        raise _runtime_error(path, f"cannot be inspected ({exc.strerror})", source) from None
    if stat.S_ISLNK(info.st_mode):
        raise _runtime_error(path, "is a symlink (someone else may control where it points)", source)
    if not stat.S_ISDIR(info.st_mode):
        raise _runtime_error(path, "is not a directory", source)
    if info.st_uid != os.geteuid():
        raise _runtime_error(path, f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})", source)
    if info.st_mode & 0o077:
        raise _runtime_error(path, f"has mode {stat.S_IMODE(info.st_mode):04o}; others could plant files in it",
                             source)


def _runtime_error(path: Path, problem: str, source: str) -> VlabError:
    return VlabError(
        f"the runtime directory {problem}", field="runtime_dir", value=str(path),
        fix=f"remove it if it is yours (rm -r {path}) or point VLAB_RUNTIME at a private directory "
            f"(mkdir -m 700 ~/.vlab-run; export VLAB_RUNTIME=~/.vlab-run)",
        detail=f"chosen from {source}",
    )


def repo_root() -> Path:
    """The source checkout holding ``vm-images/`` and ``labs/``."""
    return Path(__file__).resolve().parent.parent


def vm_images_src() -> Path:
    """The ``vm-images/`` directory: recipes and guest-program sources."""
    return repo_root() / "vm-images"
