"""The pinned guest kernel (vm-images/linux/kernel.json): read strictly, fetched from Debian's archive through a
private apt configuration when the system's apt cannot supply it, and refused when its bytes differ from the pin.

The fetch tests download the real package (about 26 MB) from Debian's archive.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.images import build, kernel
from vlab.images.kernel import load_pin
from vlab.images.manifest import sha256_file


def write_pin(tmp_path: Path, **changes: object) -> Path:
    raw = json.loads((Path(__file__).resolve().parents[2] / "vm-images" / kernel.PIN_FILE).read_text())
    raw.update(changes)
    path = tmp_path / "kernel.json"
    path.write_text(json.dumps(raw))
    return path


def test_the_committed_pin_is_debians_cloud_kernel_with_a_sha256() -> None:
    pin = load_pin()
    assert pin.package.startswith("linux-image-") and pin.package.endswith("-cloud-amd64")
    assert len(pin.sha256) == 64 and pin.architecture == "amd64"
    assert all(line.startswith("http://deb.debian.org/") for line in pin.sources)
    assert pin.identity == f"{pin.package}={pin.version} sha256:{pin.sha256}"


@pytest.mark.parametrize(("field", "value"), [
    ("package", "linux-image-x; rm -rf /"),
    ("package", "busybox"),
    ("version", ""),
    ("version", 6.1),
    ("sha256", "0" * 63),
    ("sha256", "G" * 64),
    ("architecture", None),
    ("sources", "http://deb.debian.org/debian bookworm main"),
    ("sources", []),
    ("sources", ["file:///etc bookworm main"]),
    ("sources", ["http://deb.debian.org/debian bookworm main\ndeb http://evil.example/ x main"]),
])
def test_a_malformed_pin_field_is_named(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(VlabError, match=field) as caught:
        load_pin(write_pin(tmp_path, **{field: value}))
    assert "kernel.json" in str(caught.value)


def test_a_pin_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    for text in ("[1, 2]", "{not json", ""):
        path = tmp_path / "kernel.json"
        path.write_text(text)
        with pytest.raises(VlabError, match="kernel pin"):
            load_pin(path)
    with pytest.raises(VlabError, match="cannot read"):
        load_pin(tmp_path / "missing.json")


def test_the_private_apt_configuration_reaches_only_the_pins_sources_and_trusts_only_debians_keys(
        tmp_path: Path) -> None:
    options = kernel._debian_apt(tmp_path, load_pin())
    settings = dict(options[i + 1].split("=", 1) for i in range(0, len(options), 2))
    sources = Path(settings["Dir::Etc::SourceList"]).read_text().splitlines()
    assert sources and all(f"signed-by={kernel.DEBIAN_KEYRING}]" in line for line in sources)
    assert not list(Path(settings["Dir::Etc::SourceParts"]).iterdir())  # no system sources.list.d
    assert Path(settings["Dir::State::Lists"]).is_relative_to(tmp_path)


def test_without_debians_keyring_the_fix_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "DEBIAN_KEYRING", tmp_path / "no-such-keyring.gpg")
    with pytest.raises(VlabError, match="debian-archive-keyring"):
        kernel._debian_apt(tmp_path, load_pin())


def test_an_injected_kernel_package_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_KERNEL_PACKAGE", "linux-image-amd64 -o APT::Get::AllowUnauthenticated=1")
    with pytest.raises(VlabError, match="VLAB_KERNEL_PACKAGE"):
        kernel.resolve_package(tmp_path)


def test_the_build_key_comes_from_the_pin_without_asking_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLAB_KERNEL_PACKAGE", raising=False)
    monkeypatch.delenv("VLAB_KERNEL_DEB", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get / apt-cache reachable: the pin alone must do
    assert build._kernel_identity(tmp_path) == load_pin().identity


@pytest.mark.slow
def test_the_pinned_package_from_debians_archive_through_the_private_configuration(tmp_path: Path) -> None:
    pin = load_pin()
    options = kernel._debian_apt(tmp_path, pin)
    kernel._run(["apt-get", *options, "update", "-qq"])
    kernel._run(["apt-get", *options, "download", "-qq", f"{pin.package}={pin.version}"], cwd=tmp_path)
    (deb,) = tmp_path.glob("*.deb")
    assert sha256_file(deb) == pin.sha256
    assert kernel.package_of(deb) == kernel.KernelPackage(pin.package, pin.version)


@pytest.mark.slow
def test_fetch_pinned_checks_the_bytes_and_says_where_they_came_from(tmp_path: Path) -> None:
    deb, via = kernel.fetch_pinned(tmp_path, load_pin())
    assert sha256_file(deb) == load_pin().sha256
    assert via in ("the system's apt", "Debian's archive through a private apt configuration")


@pytest.mark.slow
def test_bytes_that_differ_from_the_pin_are_refused_and_removed(tmp_path: Path) -> None:
    wrong = dataclasses.replace(load_pin(), sha256="0" * 64)
    with pytest.raises(VlabError, match="is not the pinned kernel") as caught:
        kernel.fetch_pinned(tmp_path, wrong)
    assert "sha256" in str(caught.value)
    assert not list(tmp_path.glob("*.deb"))
