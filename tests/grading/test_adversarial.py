"""The adversarial corpus (tests/grading/adversarial.py) graded for real: as root, and as an unprivileged grader.

Every submission gets at most the points of the honest answers it contains and exactly its status; afterwards
nothing it started is running, nothing it wrote is left on the host, and the canary files (a root-only secret,
the bundles, the lab sources) are byte for byte what they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grading import adversarial as adv
from tests.grading.conftest import private_tmpdir
from tests.grading.grading_submissions import DATA, EXAMPLE_SOURCE
from tests.grading.unprivileged import NOBODY, available, unprivileged
from vlab.grading.assign import assign, build
from vlab.grading.bundle import Bundle
from vlab.grading.results import SubmissionResult
from vlab.grading.runner import grade_all, make_jobs
from vlab.grading.sandbox import Job
from vlab.paths import images_dir, repo_root

SOURCES = {
    "00": EXAMPLE_SOURCE,
    "98": DATA / "source" / "98-helpers.ipynb",
    "01": repo_root() / "labs/source/01-create-vm.ipynb",
}
USERNS_ATTACKS = ("honest", "plants-modules", "symlinks", "reads-course", "daemons", "kills-everything", "strips-ids")


class Listener:
    """A TCP service on the host's 127.0.0.1 that counts who connects (class 9 must never reach it)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                peer, _ = self.server.accept()
            except OSError:
                return  # closed
            self.connections += 1
            peer.close()

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


class Course:
    """The labs assigned into a private course directory, the canaries, and the graded corpus."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = f"vlab-adv-{uuid.uuid4().hex[:10]}"
        self.listener = Listener()
        self.reached_while_grading: int | None = None  # connections to the listener while the corpus was graded
        self.canary = root / "canary"
        self.canary.mkdir(mode=0o700)
        (self.canary / "secret").write_text("root only: the instructor's secret\n")
        (self.canary / "secret").chmod(0o600)
        self.bundles: dict[str, Bundle] = {}
        self.students: dict[str, str] = {}
        for lab, source in SOURCES.items():
            if lab == "01":  # not written into the repository: the bundle as `vlab assign` makes it
                made = build(source)
                (self.canary / "01.json").write_text(made.bundle_text)
            else:
                made = assign(source, root / "labs")
                shutil.copy(made.bundle_path, self.canary / f"{lab}.json")
            self.bundles[lab] = Bundle.from_dict(made.bundle)
            self.students[lab] = made.student_text
        self.watched = [
            *self.canary.iterdir(),
            *(repo_root() / "labs" / "source").iterdir(),
            *(root / "labs" / "autograder").iterdir(),
        ]
        self.before = self.checksums()

    def checksums(self) -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in self.watched}

    def text(self, attack: adv.Attack) -> str:
        return adv.build(self.students[attack.lab], attack, str(self.canary), self.marker, self.listener.port)


@pytest.fixture(scope="module")
def course() -> Iterator[Course]:
    root = Path(tempfile.mkdtemp(prefix="vlab-adv-"))
    course = None
    try:
        course = Course(root)
        yield course
    finally:
        if course is not None:
            course.listener.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def graded(course: Course) -> dict[str, SubmissionResult]:
    """Every attack graded as root, all in one batch (2 workers; the QEMU lab's attack first: it is the longest,
    so the other worker grades the rest meanwhile)."""
    results: dict[str, SubmissionResult] = {}
    tmp = Path(tempfile.mkdtemp(prefix="vlab-adv-tmp-"))
    try:
        jobs = []
        for attack in sorted(adv.ATTACKS, key=lambda a: a.lab != "01"):
            path = course.root / "submissions" / attack.lab / f"{attack.name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(course.text(attack))
            jobs += make_jobs([(attack.name, path)], course.bundles[attack.lab])
        with private_tmpdir(tmp):
            for result in grade_all(jobs, workers=2, progress=False):
                results[result.student] = result
        assert list(tmp.iterdir()) == []  # every supervisor removed its directory
        course.reached_while_grading = course.listener.connections
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


@pytest.mark.parametrize("attack", adv.ATTACKS, ids=[a.name for a in adv.ATTACKS])
def test_attack_gains_nothing_and_gets_its_exact_status(
    graded: dict[str, SubmissionResult], attack: adv.Attack
) -> None:
    result = graded[attack.name]
    assert result.total <= attack.honest, result
    assert result.status == attack.status, (result.status, result.notes, result.cell_errors)
    assert result.isolation == ("root" if os.geteuid() == 0 else "userns")


def test_the_corpus_covers_every_class_over_three_labs() -> None:
    assert len(adv.ATTACKS) >= 30
    assert {k for a in adv.ATTACKS for k in a.klass.split("+")} >= {"1", "2", "3", "4", "5", "6", "7", "8", "9"}
    assert {a.lab for a in adv.ATTACKS} == set(SOURCES)


def test_honest_answers_score_exactly(graded: dict[str, SubmissionResult]) -> None:
    assert graded["honest"].total == 8 and graded["helper-honest"].total == 2
    assert graded["half"].total == 3 and graded["lab01-leaves-vm"].total == 3


def test_nothing_the_attacks_started_is_running(graded: dict[str, SubmissionResult], course: Course) -> None:
    assert graded["daemons"].leftovers and graded["zombie-leader"].leftovers
    assert any("qemu-system" in p.command for p in graded["lab01-leaves-vm"].leftovers)
    assert _processes_with(course.marker) == []
    for result in graded.values():  # every leftover the grader reported (the lab 01 VM has no marker) is gone
        for process in result.leftovers:
            assert not _still_running(process.pid, process.command), process


def test_no_host_file_changed_or_left_behind(graded: dict[str, SubmissionResult], course: Course) -> None:
    assert course.checksums() == course.before
    assert not list(course.canary.glob("pwned-*"))
    for place in ("/run/lock", "/run", "/var/tmp", "/dev/shm", "/tmp", "/var/lock"):
        assert not (Path(place) / course.marker).exists(), place


def test_neither_the_kernel_nor_a_guest_reaches_a_service_on_the_hosts_loopback(
    graded: dict[str, SubmissionResult], course: Course
) -> None:
    # lab01-leaves-vm boots a guest with an outbound NIC that dials the listener: its status has no "errors",
    # so the guest booted and tried
    assert graded["lab01-leaves-vm"].status == "leftovers"
    assert course.reached_while_grading == 0


@pytest.mark.qemu
def test_the_same_attack_outside_the_grader_does_reach_the_listener(course: Course) -> None:
    """The control: what class 9 tries works where nothing confines it, so its 0 connections above mean something."""
    from vlab.qemu import VM, Nic, VMConfig

    before = course.listener.connections
    with VM(VMConfig(name="adv-control", nics=(Nic(outbound=True, ip="10.0.2.15/24"),))) as vm:
        vm.console.run(f"nc -w 3 10.0.2.2 {course.listener.port} </dev/null || echo unreachable", timeout=60)
    assert course.listener.connections > before


def test_hidden_material_is_not_in_the_sandbox(graded: dict[str, SubmissionResult]) -> None:
    (error,) = graded["reads-course"].cell_errors
    assert error.evalue == "found=[] leaks=[]"


def test_a_planted_vlab_package_never_runs_in_the_grader(graded: dict[str, SubmissionResult], course: Course) -> None:
    assert graded["plants-modules"].total == 8
    assert not list(course.canary.glob("pwned-*"))


def test_feedback_never_holds_bytes_from_outside_the_sandbox(graded: dict[str, SubmissionResult]) -> None:
    text = json.dumps([r.to_dict() for r in graded.values()])
    assert "root only" not in text and "root:" not in text  # the secret, /etc/shadow


def test_output_does_not_grow_the_supervisor(graded: dict[str, SubmissionResult]) -> None:
    result = graded["prints-a-lot"]  # 384 MiB displayed, then printing without end: counted or dropped, never kept
    assert result.output_bytes > 0
    assert 0 < result.supervisor_peak_mib < 200
    big = graded["prints-big-messages"]  # 1.6 GiB in messages just under the 8 MiB cap: never queued up
    assert big.output_bytes > 0 and 0 < big.supervisor_peak_mib < 200, big.supervisor_peak_mib


def test_tampering_names_the_problem(graded: dict[str, SubmissionResult]) -> None:
    problems = {
        name: {t.problem for t in graded[name].tampered_cells}
        for name in (
            "pristine-copy-first",
            "check-to-raw",
            "check-to-markdown",
            "deletes-check",
            "reorders-locked",
            "strips-ids",
        )
    }
    assert problems == {
        "pristine-copy-first": {"duplicated"},
        "check-to-raw": {"type-changed"},
        "check-to-markdown": {"type-changed"},
        "deletes-check": {"deleted"},
        "reorders-locked": {"reordered"},
        "strips-ids": {"deleted"},
    }


def _still_running(pid: int, command: str) -> bool:
    """Whether ``pid`` is still the process the grader reported (by command line, or ``[comm]`` without one)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return command in (cmdline.strip()[:300], f"[{comm}]")


def _processes_with(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                comm = Path(f"/proc/{entry}/task/{entry}/comm").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline or marker.encode()[:15] in comm:
                found.append(cmdline.decode(errors="replace"))
    return found


# --- the same attacks against an unprivileged grader (user namespaces) ------------------------------------


@pytest.fixture(scope="module")
def graded_unprivileged(course: Course) -> dict[str, SubmissionResult]:
    if not available():
        pytest.skip("needs root to set up an unprivileged user, unshare and setpriv")
    results = {}
    place = Path(tempfile.mkdtemp(prefix="vlab-adv-nobody-"))
    place.chmod(0o755)
    try:
        for name in USERNS_ATTACKS:
            attack = next(a for a in adv.ATTACKS if a.name == name)
            work = place / name
            (work / "tmp").mkdir(parents=True)
            (work / "stage").mkdir()
            os.chown(work / "tmp", NOBODY, NOBODY)
            job = Job(f"{name}.ipynb", name, course.bundles[attack.lab], notebook=course.text(attack))
            result_file = work / "tmp" / "result.json"
            env = {
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "HOME": "/nonexistent",
                "TMPDIR": str(work / "tmp"),
                "VLAB_IMAGES": str(images_dir().resolve()),
            }
            argv = unprivileged([sys.executable, "-I", "-m", "vlab.grading.sandbox", str(result_file)], work / "stage")
            done = subprocess.run(
                argv, input=job.to_json(), capture_output=True, text=True, env=env, cwd="/", timeout=300
            )
            assert result_file.exists(), done.stderr
            results[name] = SubmissionResult.from_dict(json.loads(result_file.read_text()))
            leftover = [p.name for p in (work / "tmp").iterdir() if p.name != "result.json"]
            assert leftover == [], leftover
    finally:
        shutil.rmtree(place, ignore_errors=True)
    return results


@pytest.mark.parametrize("name", USERNS_ATTACKS)
def test_unprivileged_grader_isolates_alike(
    graded_unprivileged: dict[str, SubmissionResult], name: str, course: Course
) -> None:
    attack = next(a for a in adv.ATTACKS if a.name == name)
    result = graded_unprivileged[name]
    assert result.isolation == "userns"
    assert result.total <= attack.honest
    if name in ("honest", "plants-modules"):  # what the grader scores without root, exactly: the checks ran
        assert result.total == attack.honest, (result.total, result.checks)
    assert result.status == attack.status, (result.status, result.notes, result.cell_errors)
    if name == "reads-course":
        assert result.cell_errors[0].evalue == "found=[] leaks=[]"
    assert _processes_with(course.marker) == []
    assert course.checksums() == course.before
