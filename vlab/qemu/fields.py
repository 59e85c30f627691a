"""Validators for every public field and argument of :mod:`vlab.qemu`: one place, one error shape.

Each check takes the *field* name the user wrote (``"disks[0].path"``, ``"timeout"``) and the raw value,
and returns the normalised value or raises :class:`~vlab.errors.VlabError` naming the field, the value
(shortened by :func:`shown`), the problem and the fix. Wrong *types* are ``VlabError`` too, never a
``TypeError`` from deep inside QEMU's argv: a notebook user should read one kind of message.

Why so strict: values end up on QEMU's command line, in the guest's kernel command line and in QMP
commands. Structured QEMU options are built as JSON (see :meth:`vlab.qemu.config.VMConfig.qemu_argv`), so
commas cannot add options any more, but a NUL byte, a newline or a space still can break the kernel
command line or an argv, and a symlink can point QEMU at a file the user never meant to hand over.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from vlab.errors import VlabError

__all__ = [
    "MAX_PATH_BYTES",
    "shown",
    "check_bool",
    "check_int",
    "check_seconds",
    "check_text",
    "check_token",
    "check_file",
    "check_passphrase",
]

#: Longest path vlab accepts (Linux PATH_MAX).
MAX_PATH_BYTES = 4095
_SHOWN = 80


def shown(value: Any) -> Any:
    """The value as an error message may show it: long strings and reprs are cut to about 80 characters, in the
    middle, so that a long path still shows its file name."""
    half = _SHOWN // 2
    if isinstance(value, str) and len(value) > _SHOWN:
        return value[:half] + "…" + value[-half:]
    if isinstance(value, bytes) and len(value) > _SHOWN:
        return value[:half] + b"..." + value[-half:]
    if not isinstance(value, (str, bytes, int, float, bool, type(None), Path)):
        text = repr(value)
        return text if len(text) <= _SHOWN else text[:half] + "…" + text[-half:]
    if isinstance(value, Path):
        return shown(str(value))
    return value


def _fail(field: str, value: Any, problem: str, fix: str) -> VlabError:
    return VlabError(problem, field=field, value=shown(value), fix=fix)


def check_bool(field: str, value: Any, fix: str | None = None) -> bool:
    """Exactly ``True`` or ``False`` (``"no"`` is not False, and must not silently become True)."""
    if not isinstance(value, bool):
        raise _fail(field, value, f"must be True or False, not {type(value).__name__}", fix or f"{field}=True")
    return value


def check_int(field: str, value: Any, low: int, high: int, fix: str | None = None) -> int:
    """A whole number in ``[low, high]`` (an ``int``, or a string of digits as vm.conf gives it)."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,12}\s*", value):
        value_int = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        value_int = value
    else:
        raise _fail(field, value, f"must be a whole number, not {type(value).__name__}", fix or f"{field}={low}")
    if not low <= value_int <= high:
        raise _fail(field, value, f"must be between {low} and {high}", fix or f"{field}={low}")
    return value_int


def check_seconds(field: str, value: Any, high: float = 24 * 3600.0) -> float:
    """A finite, positive number of seconds (``inf`` would make a call that never comes back)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, value, f"must be a number of seconds, not {type(value).__name__}", f"{field}=10")
    if not math.isfinite(value) or value <= 0 or value > high:
        raise _fail(field, value, f"must be a finite number of seconds between 0 and {high:g}", f"{field}=10")
    return float(value)


def check_text(field: str, value: Any, *, max_len: int, fix: str, allow_empty: bool = False,
               allow_space: bool = True) -> str:
    """A one-line printable string: no NUL, newline or other control character, at most ``max_len`` bytes."""
    if not isinstance(value, str):
        raise _fail(field, value, f"must be a string, not {type(value).__name__}", fix)
    if not value and not allow_empty:
        raise _fail(field, value, "must not be empty", fix)
    if len(value.encode("utf-8", "surrogateescape")) > max_len:
        raise _fail(field, value, f"is too long ({len(value)} characters; at most {max_len} bytes)", fix)
    bad = next((c for c in value if not c.isprintable() or (not allow_space and c.isspace())), None)
    if bad is not None:
        what = "whitespace" if bad.isspace() and bad.isprintable() else f"control character {bad!r}"
        raise _fail(field, value, f"contains {what}", fix)
    return value


def check_token(field: str, value: Any, pattern: str, describe: str, fix: str) -> str:
    """A string matching ``pattern`` in full (names, ids, models that go into QEMU options as they are)."""
    if not isinstance(value, str):
        raise _fail(field, value, f"must be a string, not {type(value).__name__}", fix)
    if not re.fullmatch(pattern, value):
        raise _fail(field, value, f"must be {describe}", fix)
    return value


def check_file(field: str, value: Any, fix: str) -> Path:
    """An existing regular file, made absolute; refused if it is a symlink, has NUL bytes or is too long.

    Absolute because QEMU and ``qemu-img`` read ``json:…`` or ``proto:…`` prefixes in a relative filename
    as options; not a symlink because QEMU would open whatever the link points to (e.g. a host file the
    student cannot read but the grader can), so vlab only hands over files that are what they look like.
    """
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise _fail(field, value, f"must be a path (str or Path), not {type(value).__name__}", fix)
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise _fail(field, value, "must be a non-empty path", fix)
    if "\x00" in text or any(not c.isprintable() for c in text):
        raise _fail(field, value, "contains a NUL byte or a control character", fix)
    path = Path(text).expanduser().absolute()
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise _fail(field, value, f"is longer than {MAX_PATH_BYTES} bytes", fix)
    try:
        info = path.lstat()
    except OSError:
        raise _fail(field, value, "does not exist", fix) from None
    if stat.S_ISLNK(info.st_mode):
        raise _fail(field, value, f"is a symlink (to {shown(os.readlink(path))}); vlab only opens real files",
                    f"pass the file itself: {field}={shown(str(path.resolve()))!r}")
    if not stat.S_ISREG(info.st_mode):
        raise _fail(field, value, "is not a regular file", fix)
    return path


def check_passphrase(field: str, secret: object) -> bytes:
    """A LUKS passphrase as bytes: any bytes (non-UTF-8, NUL, newline, commas...), or text as ``str``.

    ``str`` is encoded as UTF-8 (with ``surrogateescape``, so a name decoded by ``os.fsdecode`` gives back its
    bytes). How bytes QEMU cannot take as they are still reach it: :func:`vlab.qemu.disks.luks_passphrase`.
    Errors never show the passphrase, only its type or length.
    """
    fix = 'secret="any text" or secret=b"any bytes", 1 to 4096 bytes long'
    if isinstance(secret, str):
        try:
            data = secret.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: no bytes mean this text
            raise VlabError("is a str with a lone surrogate, which has no UTF-8 form", field=field,
                            value="<hidden>", fix="pass the bytes you mean: secret=b\"...\"") from None
    elif isinstance(secret, bytes):
        data = secret
    else:  # bytearray too: a Disk is frozen and hashable, its passphrase must not change under it
        raise VlabError(f"must be str or bytes, not {type(secret).__name__}", field=field, value="<hidden>",
                        fix=fix)
    if not data or len(data) > 4096:
        raise VlabError(f"must be 1 to 4096 bytes long, not {len(data)}", field=field, value="<hidden>", fix=fix)
    return data
