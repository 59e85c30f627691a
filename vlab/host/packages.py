"""The Debian packages vlab needs: one list, ``binder/apt.txt``, read here at run time.

repo2docker installs that file on Binder, ``./setup.sh`` reads it, ``binder/check.py`` replays it and
``vlab doctor`` derives its fix line from it, so no second copy can drift. vlab runs from its checkout
(``./setup.sh`` and Binder's ``postBuild`` install it with ``pip install -e .``), where the file is; an install
without the checkout gets a :class:`VlabError` that says where the list lives.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlab.errors import VlabError
from vlab.paths import repo_root

__all__ = ["APT_TXT", "read_apt_txt", "apt_install_command"]

#: The list, in the checkout vlab runs from.
APT_TXT = repo_root() / "binder" / "apt.txt"

_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9.+-]*")


def read_apt_txt(path: Path | None = None) -> list[str]:
    """Package names in ``apt.txt`` (default :data:`APT_TXT`), parsed as repo2docker does: ``#`` starts a
    comment, blank lines are skipped.

    :raises VlabError: the file is absent (vlab installed without its checkout) or a line is not a package name
        (repo2docker passes each line to ``apt-get install``, so a stray word would reach a root shell command).
    """
    path = APT_TXT if path is None else path  # read at call time: tests point APT_TXT elsewhere
    try:
        text = path.read_text()
    except OSError as exc:
        raise VlabError(
            f"the Debian package list cannot be read ({exc.strerror})",
            field="apt.txt",
            value=str(path),
            fix="install the Debian packages listed in binder/apt.txt of vlab's repository "
            "(vlab runs from its checkout: pip install -e .)",
        ) from None
    packages = []
    for line in text.splitlines():
        name = line.partition("#")[0].strip()
        if not name:
            continue
        if not _PACKAGE_NAME.fullmatch(name):
            raise VlabError(f"{name!r} is not a Debian package name", field="apt.txt", value=str(path),
                            fix="one package name a line; '#' starts a comment")
        packages.append(name)
    return packages


def apt_install_command(path: Path | None = None) -> str:
    """The command that installs every package of ``apt.txt`` (default :data:`APT_TXT`) as Binder does."""
    return "sudo apt-get install --no-install-recommends " + " ".join(read_apt_txt(path))
