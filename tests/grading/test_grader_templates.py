"""VMs a graded notebook starts restore from root's snapshot templates, which the notebook cannot change.

Lab 99 (tests/grading/data/source/99-vms.ipynb) starts two guests in a locked cell: the default one (the template's
copy form) and one without a balloon (the shared-RAM form). Its hidden check passes only if both were *restored*
(``vm.start_mode``, with ``vm.start_note`` in the message otherwise) and neither QEMU maps the template's own RAM
file. The submission graded here adds a cell that attacks the template cache as the throw-away uid (write, chmod,
rename, unlink, replace by a symlink, plant a template, utime) and one that leaves a restored VM running.

The cache is private to this module (``VLAB_TEMPLATES``, built here as root): the grader hands it to the jail
read-only, and its sha256s, modes and owners must be what they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grading.conftest import private_tmpdir
from tests.grading.grading_submissions import DATA
from tests.qemu.template_cache import private_template_cache
from vlab.errors import VlabError
from vlab.grading.assign import build
from vlab.grading.bundle import Bundle
from vlab.grading.results import SubmissionResult
from vlab.grading.runner import grade_all, make_jobs
from vlab.grading.testing import solution_notebook_text
from vlab.qemu import VMConfig, template

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the grader's throw-away uid needs root"),
]

SOURCE = DATA / "source" / "99-vms.ipynb"
CONFIGS = (VMConfig(accel="tcg"), VMConfig(accel="tcg", mem=96, balloon=False))

# every way the student's uid could change a template for the next submission; any success is a cell error
TAMPER = """import os, shutil
from vlab.qemu import VMConfig, template
root = template.templates_dir()
worked = []
def attempt(what, action):
    try:
        action()
        worked.append(what)
    except OSError:
        pass
for config in (VMConfig(accel="tcg"), VMConfig(accel="tcg", mem=96, balloon=False)):
    found = template.find(config, "tcg")
    assert found is not None, "the template is not visible in the sandbox"
    for name in sorted(os.listdir(found.directory)):
        path = str(found.directory / name)
        attempt(f"write {{name}}", lambda: open(path, "r+b").write(b"\\0" * 4096))
        attempt(f"truncate {{name}}", lambda: os.truncate(path, 0))
        attempt(f"chmod {{name}}", lambda: os.chmod(path, 0o666))
        attempt(f"utime {{name}}", lambda: os.utime(path, (0, 0)))
        attempt(f"rename {{name}}", lambda: os.rename(path, path + ".old"))
        attempt(f"unlink {{name}}", lambda: os.unlink(path))
        attempt(f"symlink {{name}}", lambda: (os.symlink("/dev/zero", path + ".l"), os.replace(path + ".l", path)))
    attempt("chmod the template", lambda: os.chmod(found.directory, 0o777))
    attempt("rename the template", lambda: os.rename(found.directory, str(found.directory) + ".old"))
    attempt("remove the template", lambda: shutil.rmtree(found.directory))
attempt("chmod the cache", lambda: os.chmod(root, 0o777))
attempt("plant a template", lambda: os.mkdir(root / ("0" * 32)))
attempt("plant a lock", lambda: open(root / ".{marker}.lock", "w"))
if worked:
    raise RuntimeError(f"the student changed the template cache: {{worked}}")"""

LEAVE_VM = """from vlab.qemu import VM, VMConfig
left_running = VM(VMConfig(name="{marker}", accel="tcg"))
left_running.start()
assert left_running.start_mode == "restored", left_running.start_note"""


def _cache_state(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry of the cache: sha256 (files) or "dir", mode and owner."""
    state = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (digest, info.st_mode, info.st_uid)
    return state


@pytest.fixture(scope="module")
def cache(guest_images: tuple[Path, Path]) -> Iterator[Path]:
    """A template cache of root's, with both templates built (before grading, as the instructor would)."""
    root = Path(tempfile.mkdtemp(prefix="vlab-grader-templates-"))
    root.chmod(0o755)
    with private_template_cache(root):
        for config in CONFIGS:
            template.ensure(config, "tcg")
        yield root


@pytest.fixture(scope="module")
def guest_images() -> tuple[Path, Path]:
    from vlab.qemu import default_initrd, default_kernel

    try:
        return default_kernel(), default_initrd()
    except VlabError as exc:
        pytest.skip(f"guest images not built ({exc.value}): run `vlab images build`")


class Graded:
    def __init__(self, result: SubmissionResult, marker: str, before: dict[str, tuple[str, int, int]],
                 after: dict[str, tuple[str, int, int]], tmp_left: list[str]) -> None:
        self.result, self.marker, self.before, self.after, self.tmp_left = result, marker, before, after, tmp_left


@pytest.fixture(scope="module")
def graded(cache: Path) -> Graded:
    """The lab 99 solution plus the attack and the left-running VM, graded once as root."""
    assignment = build(SOURCE)
    marker = f"vlab-tmpl-{uuid.uuid4().hex[:10]}"
    notebook = json.loads(solution_notebook_text(SOURCE))
    extra = [TAMPER.format(marker=marker), LEAVE_VM.format(marker=marker)]
    for number, source in enumerate(extra):
        notebook["cells"].append({"cell_type": "code", "id": f"extra{number}", "metadata": {}, "source": source,
                                  "outputs": [], "execution_count": None})
    before = _cache_state(cache)
    work = Path(tempfile.mkdtemp(prefix="vlab-grader-templates-run-"))
    work.chmod(0o711)  # the throw-away uid must reach its working directory inside
    try:
        path = work / "student.ipynb"
        path.write_text(json.dumps(notebook))
        jobs = make_jobs([("student", path)], Bundle.from_dict(assignment.bundle))
        path_tmp = work / "tmp"
        path_tmp.mkdir(mode=0o711)
        with private_tmpdir(path_tmp):
            (result,) = grade_all(jobs, workers=1, progress=False)
        tmp_left = [p.name for p in path_tmp.iterdir()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Graded(result, marker, before, _cache_state(cache), tmp_left)


def test_graded_vms_restore_from_roots_templates(graded: Graded) -> None:
    result = graded.result
    assert result.isolation == "root"
    (check,) = result.checks
    assert check.passed, check.message  # both restored, neither maps the template's RAM file, the echo answered
    assert result.total == result.max == 2


def test_the_submission_cannot_change_the_templates(graded: Graded) -> None:
    assert graded.result.cell_errors == [], graded.result.cell_errors  # every attempt of the attack failed
    assert graded.after == graded.before


def test_a_restored_vm_left_running_is_found_and_killed(graded: Graded) -> None:
    result = graded.result
    assert result.status == "leftovers", (result.status, result.notes)
    assert [p for p in result.leftovers if "qemu-system" in p.command and graded.marker in p.command]
    assert not _processes_with(graded.marker)
    assert graded.tmp_left == []  # the submission's directories are gone


def test_the_grader_hands_its_template_cache_to_the_jail(cache: Path) -> None:
    from vlab.grading.mounts import student_readonly
    from vlab.grading.sandbox import _supervisor_env

    assert str(cache.resolve()) in student_readonly()  # bound read-only
    assert _supervisor_env()[template.TEMPLATES_ENV] == str(cache.resolve())
    assert template.COLD_BOOT_ENV not in _supervisor_env()


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found
