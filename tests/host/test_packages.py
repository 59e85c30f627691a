"""vlab.host.packages: ``binder/apt.txt`` parsed as repo2docker does, and the install command derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.host import packages
from vlab.paths import repo_root


def test_the_list_is_the_checkouts_binder_apt_txt() -> None:
    assert repo_root() / "binder" / "apt.txt" == packages.APT_TXT
    assert {"qemu-system-x86", "qemu-utils", "debian-archive-keyring"} <= set(packages.read_apt_txt())


def test_apt_txt_is_parsed_like_repo2docker_does(tmp_path: Path) -> None:
    listing = tmp_path / "apt.txt"
    listing.write_text("# comment\n\nqemu-utils  # trailing comment\n  cpio\nlibc6-dev\n")
    assert packages.read_apt_txt(listing) == ["qemu-utils", "cpio", "libc6-dev"]
    listing.write_text("qemu-utils; rm -rf /\n")
    with pytest.raises(VlabError, match="not a Debian package name"):
        packages.read_apt_txt(listing)


def test_the_install_command_names_every_package_in_order(tmp_path: Path) -> None:
    listing = tmp_path / "apt.txt"
    listing.write_text("qemu-utils\n# why\ncpio\n")
    assert packages.apt_install_command(listing) == "sudo apt-get install --no-install-recommends qemu-utils cpio"


def test_without_the_checkout_a_vlab_error_says_where_the_list_lives(tmp_path: Path) -> None:
    with pytest.raises(VlabError, match="cannot be read") as caught:
        packages.apt_install_command(tmp_path / "apt.txt")
    assert caught.value.fix is not None and "binder/apt.txt" in caught.value.fix
