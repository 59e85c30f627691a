"""Host programs for the guest: their loader and libraries read from ELF headers, checked against ldd."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from vlab.errors import VlabError
from vlab.images import elfdeps
from vlab.images.initramfs import BUSYBOX

CRYPTSETUP = Path("/sbin/cryptsetup")
needs_cryptsetup = pytest.mark.skipif(not CRYPTSETUP.exists(), reason="cryptsetup-bin is not installed")


@needs_cryptsetup
def test_cryptsetups_loader_and_libraries_are_what_ldd_finds() -> None:
    program = elfdeps.needed_objects(CRYPTSETUP)
    loader = program.objects[0]
    if shutil.which("readelf"):  # binutils, which gcc brings
        headers = subprocess.run(["readelf", "-l", str(CRYPTSETUP)], capture_output=True, text=True, check=True)
        assert f"[Requesting program interpreter: {loader.target}]" in headers.stdout
    assert loader.source.samefile(str(loader.target))
    ldd = subprocess.run(["ldd", str(CRYPTSETUP)], capture_output=True, text=True, check=True).stdout
    found = {line.split()[0]: Path(line.split()[2]) for line in ldd.splitlines() if " => /" in line}
    libraries = {obj.target.name: obj.source for obj in program.objects[1:]}
    assert set(libraries) == set(found)  # no more, no fewer: linux-vdso is the kernel's, the loader is PT_INTERP
    assert all(libraries[name].samefile(found[name]) for name in found)
    assert [str(o.target) for o in program.objects[1:]] == sorted(str(o.target) for o in program.objects[1:])


def test_a_static_program_and_a_non_elf_file_are_refused_with_the_recipe_named(tmp_path: Path) -> None:
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    for path, problem in ((BUSYBOX, "PT_INTERP"), (text, "not a 64-bit"), (tmp_path / "none", "cannot be read")):
        if not path.exists() and path != tmp_path / "none":
            continue
        with pytest.raises(VlabError) as caught:
            elfdeps.needed_objects(path)
        assert caught.value.field == "vm-images/linux/binaries" and problem in caught.value.problem
        assert caught.value.value == str(path) and caught.value.fix


@needs_cryptsetup
def test_a_library_that_is_not_installed_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(elfdeps, "_default_dirs", lambda machine: [str(tmp_path)])
    with pytest.raises(VlabError) as caught:
        elfdeps.needed_objects(CRYPTSETUP, PurePosixPath("/sbin/cryptsetup"))
    assert "libcryptsetup.so.12" in caught.value.problem and "apt-file search" in (caught.value.fix or "")
