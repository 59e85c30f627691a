"""Whose snapshot templates a process uses: its own and root's, never another user's.

Root refuses a template (or a cache) a student uid owns; a student uid (run in the grader's real jail, as a
throw-away uid with the cache bound read-only) uses root's, refuses another student uid's, never builds in root's
cache, and gets a private copy of a shared-form RAM file, since QEMU 7.2 opens that file read-write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.template_cache import private_template_cache
from vlab.grading.jail import JailSpec
from vlab.grading.mounts import student_readonly
from vlab.paths import images_dir
from vlab.qemu import VMConfig, template
from vlab.qemu.template import Template, TemplateError

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="uid switching needs root"),
]

STUDENT, OTHER = 1_999_999_971, 1_999_999_972
SMALL = VMConfig(accel="tcg", mem=96, balloon=False, name="owners")  # the shared-RAM form: quick to build


@pytest.fixture(scope="module")
def cache(guest_images: tuple[Path, Path]) -> Iterator[Path]:
    """A private cache of root's (0755), as the grader's would be."""
    root = Path(tempfile.mkdtemp(prefix="vlab-owners-"))
    root.chmod(0o755)
    with private_template_cache(root):
        yield root


@pytest.fixture(scope="module")
def small(cache: Path) -> Template:
    found, _ = template.ensure(SMALL, "tcg")
    assert found.shared
    return found


def _chown_tree(path: Path, uid: int) -> None:
    for entry in [path, *path.rglob("*")]:
        os.lchown(entry, uid, uid)


def _as_student(code: str, uid: int = STUDENT) -> dict[str, object]:
    """Run ``code`` in the grader's jail (root mode: namespaces, allow-list root, throw-away ``uid``); its JSON."""
    base = Path(tempfile.mkdtemp(prefix="vlab-owners-jail-"))
    try:
        base.chmod(0o755)
        (base / "work").mkdir()
        (base / "stage").mkdir()
        os.chown(base / "work", uid, uid)
        spec = JailSpec(mode="root", uid=uid, address_space_mb=16384, cpu_seconds=60, file_mb=512, processes=64,
                        workdir=str(base / "work"), readonly=student_readonly(), stage=str(base / "stage"))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base / "work"), "TMPDIR": "/tmp",
               template.TEMPLATES_ENV: os.environ[template.TEMPLATES_ENV], "VLAB_IMAGES": str(images_dir())}
        done = subprocess.run(spec.command([sys.executable, "-c", code]), capture_output=True, text=True,
                              timeout=120, cwd="/", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


_FIND = """import json
from vlab.qemu import VMConfig, template
try:
    found = template.find(VMConfig(accel="tcg", mem=96, balloon=False), "tcg")
    print(json.dumps({"found": found.key if found else None}))
except template.TemplateError as exc:
    print(json.dumps({"refused": exc.problem}))"""


def test_root_refuses_a_template_or_a_cache_a_student_uid_owns(small: Template, cache: Path) -> None:
    _chown_tree(small.directory, STUDENT)
    try:
        with pytest.raises(TemplateError, match=f"not yours or root's alone \\(uid {STUDENT}"):
            template.find(SMALL, "tcg")
    finally:
        _chown_tree(small.directory, 0)
    os.chown(cache, STUDENT, STUDENT)
    try:
        with pytest.raises(TemplateError, match=f"cache directory is not yours or root's alone \\(uid {STUDENT}"):
            template.ensure(SMALL, "tcg")
    finally:
        os.chown(cache, 0, 0)
    assert template.find(SMALL, "tcg") == small


def test_a_student_uid_uses_roots_template_and_refuses_another_students(small: Template) -> None:
    assert _as_student(_FIND) == {"found": small.key}
    _chown_tree(small.directory, OTHER)
    try:
        refused = _as_student(_FIND)
        own = _as_student(_FIND, uid=OTHER)
    finally:
        _chown_tree(small.directory, 0)
    assert f"not yours or root's alone (uid {OTHER}" in str(refused["refused"])
    assert own == {"found": small.key}  # a uid's own template is its to use


def test_a_student_uid_never_builds_in_roots_cache(small: Template, cache: Path) -> None:
    before = sorted(p.name for p in cache.iterdir())
    seen = _as_student("""import json
from vlab.qemu import VMConfig, template
try:
    template.ensure(VMConfig(accel="tcg", mem=112, balloon=False), "tcg")
    print(json.dumps({"built": True}))
except template.TemplateError as exc:
    print(json.dumps({"refused": exc.problem, "fix": exc.fix}))""")
    assert "only its owner builds templates there" in str(seen["refused"]), seen
    assert "vlab images template" in str(seen["fix"])
    assert sorted(p.name for p in cache.iterdir()) == before


def test_a_student_uid_gets_a_private_copy_of_the_shared_ram_file(small: Template) -> None:
    assert small.ram_path is not None
    assert small.memory_backend()["mem-path"] == str(small.ram_path)  # root writes its own file: mapped as is
    seen = _as_student("""import hashlib, json, os, tempfile
from pathlib import Path
from vlab.qemu import VMConfig, template
found = template.find(VMConfig(accel="tcg", mem=96, balloon=False), "tcg")
work = Path(tempfile.mkdtemp())
backend = found.memory_backend(work)
copy = Path(backend["mem-path"])
info = copy.stat()
try:
    found.memory_backend(None)
    without = "made"
except template.TemplateError as exc:
    without = exc.problem
print(json.dumps({"copy": str(copy), "in_workdir": copy.parent == work, "uid": info.st_uid,
                  "mode": oct(info.st_mode & 0o777), "share": backend["share"], "without": without,
                  "sha256": hashlib.sha256(copy.read_bytes()).hexdigest()}))""")
    assert seen["in_workdir"] and seen["uid"] == STUDENT and seen["mode"] == "0o600" and seen["share"] is False
    assert seen["sha256"] == small.meta["files"]["ram"]["sha256"]
    assert "no directory to copy it to" in str(seen["without"])
