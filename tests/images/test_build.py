"""The real image build: from the Debian kernel package to a bootable initramfs, and a no-op second time."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from vlab.images import build as build_module
from vlab.images.build import INITRD_NAME, KERNEL_NAME, build_images
from vlab.images.kernel import load_order
from vlab.images.manifest import Manifest
from vlab.paths import images_dir

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def images() -> Path:
    directory = images_dir()
    if Manifest.load(directory) is None:
        pytest.skip("guest images not built: run `vlab images build`")
    return directory


def test_second_build_with_nothing_changed_is_a_no_op(images: Path) -> None:
    lines: list[str] = []
    result = build_images(images, report=lines.append)
    assert not result.built
    assert lines == [f"images are up to date in {images}"]
    assert not list(images.glob(".build-*"))  # the work directory is gone


def test_manifest_names_sources_sizes_and_checksums(images: Path) -> None:
    manifest = Manifest.load(images)
    assert manifest is not None
    assert {KERNEL_NAME, INITRD_NAME} <= set(manifest.files)
    assert any(name.startswith("linux-image-") for name in manifest.sources)
    assert manifest.problems(images) == []


def test_initramfs_holds_init_busybox_and_modules_in_dependency_order(images: Path) -> None:
    listing = (
        subprocess.run(
            ["cpio", "-t", "--quiet"],
            input=gzip.decompress((images / INITRD_NAME).read_bytes()),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split()
    )
    assert {"init", "bin/busybox", "bin/memdirty", "etc/acpi/PWRF/00000080", "etc/vlab/modules"} <= set(listing)
    order = Manifest.load(images).details["kernel_modules"]  # type: ignore[union-attr]
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")


def test_load_order_puts_dependencies_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deps = {
        "virtio_net": ["virtio", "net_failover"],
        "net_failover": ["failover"],
        "virtio": ["virtio_ring"],
        "failover": [],
        "virtio_ring": [],
    }
    monkeypatch.setattr("vlab.images.kernel._depends", lambda path: deps[path.stem])
    available = {name: tmp_path / f"{name}.ko" for name in deps}
    assert load_order(["virtio_net"], available) == ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net"]


def test_changed_recipe_changes_the_inputs_key(images: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = build_module.inputs_key("linux-image-x=1")
    recipe = tmp_path / "vm-images"
    (recipe / "linux").mkdir(parents=True)
    (recipe / "linux" / "init").write_text("#!/bin/sh\n")
    monkeypatch.setattr(build_module, "vm_images_src", lambda: recipe)
    assert build_module.inputs_key("linux-image-x=1") != before


def test_initramfs_holds_cryptsetup_with_its_libraries_and_dm_crypt_modules_for_later(images: Path) -> None:
    manifest = Manifest.load(images)
    assert manifest is not None
    if "/sbin/cryptsetup" not in manifest.details.get("host_programs", {}):
        pytest.skip("built before cryptsetup was in the image: run `vlab images build`")
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=gzip.decompress((images / INITRD_NAME).read_bytes()),
                             capture_output=True, check=True).stdout.decode().split()
    copied = manifest.details["host_programs"]["/sbin/cryptsetup"]
    assert copied[0] == "/lib64/ld-linux-x86-64.so.2" and "/lib/x86_64-linux-gnu/libcrypto.so.3" in copied
    assert {"sbin/cryptsetup", "bin/cryptsetup", "etc/vlab/modules.dm-crypt"} | {p[1:] for p in copied} <= set(listing)
    on_demand = manifest.details["on_demand_modules"]["dm-crypt"]
    assert on_demand.index("dm_mod") < on_demand.index("dm_crypt") and {"ecb", "xts"} <= set(on_demand)
    assert not set(on_demand) & set(manifest.details["kernel_modules"])  # not loaded at boot
    assert "cryptsetup-bin" in manifest.sources and "libssl3" in manifest.sources
