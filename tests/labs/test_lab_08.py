"""Lab 08's own checks: each misconception fails its check with its hint, and the solution passes.

``tests/labs/test_labs.py`` covers what every lab shares (current student copy, 100 % / 0 %, the grading design);
here each wrong answer is a real variant a student might write — a runtime that keeps the old root mounted or
binds the host's /proc, an escape that only reads the path, a "same kernel" by release, a density in the wrong
unit, a naive unpacker — run through the lab's own checks on the real kernel.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from vlab.grading.assign import build
from vlab.grading.testing import lab_checks, run_check, solution_answers
from vlab.labs import containers as lab

SOURCE = Path(__file__).resolve().parents[2] / "labs" / "source" / "08-containers.ipynb"
HOST = lab.support()
needs_ns = pytest.mark.skipif(not HOST.namespaces, reason=HOST.why)


def answers(**replace: tuple[str, str]) -> dict[str, Any]:
    """The solution's exports (with ``replace[q] = (old, new)`` applied to question q's cell) and the read-only
    helpers, as the grader's exports would hold them."""
    namespace = solution_answers(SOURCE, {"lab": lab}, replace=replace,
                                 readonly=lambda text: re.match(r"# vlab: readonly q\d", text) is not None)
    host = {"kernel": "6.1.0-9-amd64", "boot_id": "b00t", "hostname": "h", "uptime_s": 9.0, "modules": 3,
            "processes": 99}
    namespace["measured"] = {"container_kib": 1500, "vm_kib": 150_000,
                             "views": {"host": host, "vm": dict(host, boot_id="0ther"), "container": dict(host)}}
    return namespace


@pytest.fixture(scope="module")
def checks() -> tuple[dict[str, Any], dict[str, Any]]:
    namespace, found = lab_checks(SOURCE)
    return namespace["PARAMS"], found


def verdict(checks: tuple[dict[str, Any], dict[str, Any]], name: str, **replace: tuple[str, str]) -> tuple[bool, str]:
    params, found = checks
    result = run_check(found[name], params, **answers(**replace))
    return result.passed, result.message


@needs_ns
def test_the_solution_passes_every_check(checks: tuple[dict[str, Any], dict[str, Any]]) -> None:
    failed = {name: verdict(checks, name)[1] for name in checks[1] if not verdict(checks, name)[0]}
    assert not failed


@needs_ns
@pytest.mark.parametrize(("old", "new", "hint"), [
    ('umount("/.old-root", MNT_DETACH)  # the step that keeps the host\'s files out of reach\n'
     '                os.rmdir("/.old-root")', "pass", "unmount the old root"),
    ('mount("proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)',
     'mount("/proc", root / "proc", None, MS_BIND | MS_REC)', "mount a fresh proc"),
    ("unshare(CLONE_NEWPID)", "pass", "is not PID 1"),
    ('sethostname(limits.get("hostname", "container"))', "pass", "hostname"),
    ("CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET", "CLONE_NEWUTS | CLONE_NEWIPC", "CLONE_NEWNET"),
    ("CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET", "CLONE_NEWUTS | CLONE_NEWNET", "CLONE_NEWIPC"),
])
def test_a_runtime_that_skips_a_step_loses_q1_with_that_steps_hint(checks: Any, old: str, new: str, hint: str) -> None:
    passed, message = verdict(checks, "your_container_is_isolated", q1=(old, new))
    assert not passed and hint in message, message


_FIRST_LINE = "    layers = [rootfs] if isinstance(rootfs, (str, Path)) else list(rootfs)"


@needs_ns
@pytest.mark.parametrize(("forgery", "hint", "also"), [
    # a result made up from the command (the exit status is its last word): no process ever ran it
    ("    return lab.Completed(int(cmd[-1].split()[-1]) if 'exit' in cmd[-1] else 0, "
     "f\"host={limits['hostname']}\\n\", 0.1)\n", "the host saw no process", ["your_runtime_contains_and_cleans_up"]),
    # the command run for real, on the host: the output may say anything, the kernel says where it ran
    ("    return lab.spawn(lambda: os.execv('/bin/sh', list(cmd)), timeout=10)\n", "not PID 1", []),
])
def test_a_runtime_that_reports_instead_of_isolating_fails_q1(checks: Any, forgery: str, hint: str,
                                                              also: list[str]) -> None:
    """What a runtime returns is the student's to make up; what the host sees of the process that ran the probe
    (lab.Observer: its PID in its namespace, its namespaces, its root) is not."""
    passwd = Path("/etc/passwd").read_bytes()
    for name in ["practice_container_is_isolated", "your_container_is_isolated", *also]:
        passed, message = verdict(checks, name, q1=(_FIRST_LINE, forgery + _FIRST_LINE))
        assert not passed and hint in message, (name, message)
    # the probe run on the host's root wrote nothing there (it once overwrote /etc/passwd as root)
    assert not Path(lab.SCRIBBLE_DIR).exists() and Path("/etc/passwd").read_bytes() == passwd


def test_without_namespaces_the_container_checks_are_unchecked(checks: Any, no_unshare: None) -> None:
    """A grading host that cannot create namespaces (unshare(1) not found, as the probe sees Binder) must not
    hand out the container questions' points to whoever submits: the checks score 0 as not checked on this host
    (the grader's status then says ``unchecked``), naming the host."""
    params, found = checks
    for name in ("your_container_is_isolated", "your_runtime_contains_and_cleans_up", "escape_with_a_fresh_secret",
                 "practice_failure_leaves_nothing"):
        result = run_check(found[name], params, **answers())
        assert (result.passed, result.unchecked) == (False, True), (name, result)
        assert result.message.startswith("not checked on this host: "), (name, result.message)


@needs_ns
def test_reading_the_path_is_no_escape(checks: Any) -> None:
    passed, message = verdict(checks, "escape_with_a_fresh_secret",
                              q3=("return f'for p in /proc/[0-9]*/root; do cat \"$p{secret_path}\" 2>/dev/null "
                                  "&& break; done'", "return f'cat {secret_path}'"))
    assert not passed and "/proc" in message, message


def test_same_release_is_not_same_kernel(checks: Any) -> None:
    wrong = ('return other["boot_id"] == host["boot_id"]', 'return other["kernel"] == host["kernel"]')
    assert not verdict(checks, "your_views", q6=wrong)[0]
    passed, message = verdict(checks, "practice_views", q6=wrong)
    assert not passed and "release" in message, message


def test_density_in_the_wrong_unit_and_a_quota_without_the_caps_fail(checks: Any) -> None:
    assert not verdict(checks, "your_density", q5=("budget_mib * 1024 // kib", "budget_mib // kib"))[0]
    assert not verdict(checks, "prediction_on_other_instances",
                       q2=("min(quota, processes, cpus) * seconds", "quota * seconds"))[0]


def test_an_unpacker_without_the_data_filter_writes_outside_dest(checks: Any) -> None:
    passed, message = verdict(checks, "hostile_layers_write_nothing_outside",
                              q4=(', filter="data")', ")"))
    assert not passed and "outside dest" in message, message


@needs_ns
@pytest.mark.skipif(os.geteuid() != 0, reason="the grader's jail (throw-away uid) needs root")
def test_in_the_grader_too_the_naive_unpacker_is_caught_and_a_sound_one_unpacks(tmp_path: Path) -> None:
    """In the real sandbox the checks' files live in the grader's shared directory: the student's process must
    be able to unpack into the directories a check opens up, and an escape from them must be seen."""
    from vlab.grading.testing import grade_notebook, solution_notebook_text

    text = solution_notebook_text(SOURCE)
    assert ', filter=\\"data\\")' in text
    submission = tmp_path / "naive.ipynb"
    submission.write_text(text.replace(', filter=\\"data\\")', ")"))
    result = grade_notebook(submission, build(SOURCE).bundle, "naive")
    verdicts = {c["name"]: (c["passed"], c["message"]) for c in result["checks"]}
    assert verdicts["your_image"] == (True, ""), verdicts["your_image"]
    passed, message = verdicts["hostile_layers_write_nothing_outside"]
    assert not passed and "outside dest" in message, message


def test_no_line_of_a_solution_is_visible_in_the_student_notebook() -> None:
    """Each solution region's lines (other than trivial ones) appear nowhere in what the student gets."""
    student = build(SOURCE).student_text
    notebook = json.loads(SOURCE.read_text())
    solutions = [re.search(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", "".join(cell["source"]), re.S)
                 for cell in notebook["cells"]]
    lines = {line.strip() for found in solutions if found for line in found.group(1).splitlines()}
    toolbox = {"die_with_parent()", "write_id_maps(uid, gid)"}  # the wrappers the prose lists, not an answer
    visible = [line for line in lines - toolbox if len(line) > 12 and json.dumps(line)[1:-1] in student]
    assert not visible, f"solution lines visible to the student: {visible}"
    assert os.path.basename(SOURCE) == "08-containers.ipynb"


ESCAPE_CELL = '''
import os
from vlab.host.syscalls import CLONE_NEWNS, CLONE_NEWUSER, MNT_DETACH, umount, unshare, write_id_maps
from vlab.labs import containers as lab

TARGETS = {targets!r}
uid, gid = os.getuid(), os.getgid()


def attempt():
    unshare(CLONE_NEWUSER | CLONE_NEWNS)  # root in a namespace of our own: can we lift the jail's covers?
    write_id_maps(uid, gid)
    refused = read = 0
    for target in TARGETS:
        try:
            umount(target, MNT_DETACH)
            print("UNMOUNTED", target)
        except Exception:
            refused += 1
        for path in [target, *(f"/proc/{{p}}/root{{target}}" for p in os.listdir("/proc") if p.isdigit())]:
            try:
                with open(path) as handle:
                    print("READ", path, handle.read()[:20])
                    read += 1
            except OSError:
                pass
    print(f"refused={{refused}} read={{read}} done")


result = lab.spawn(attempt, timeout=20)
raise RuntimeError("escape: " + result.output.replace(chr(10), " | ")[-1500:])
'''


@needs_ns
@pytest.mark.skipif(os.geteuid() != 0, reason="the grader's jail (throw-away uid, hidden paths) needs root")
def test_the_labs_tools_do_not_lift_the_grader_jail(tmp_path: Path) -> None:
    """A submission that becomes root in its own user and mount namespace (what the lab teaches) can neither
    unmount nor read what the grader's allow-list root leaves out (the bundle, a secret, the submissions: all
    world-readable on the host), not even through /proc/PID/root."""
    from vlab.grading.testing import grade_notebook

    tmp_path.chmod(0o711)
    assignment = build(SOURCE)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    bundle_file, secret_file = hidden / "08.json", tmp_path / "grading-secret"
    bundle_file.write_text(json.dumps(assignment.bundle))
    secret_file.write_text("the-course-secret\n")
    for path in (bundle_file, secret_file):
        path.chmod(0o644)  # readable by anyone: only the jail's covers keep them from the student
    notebook = json.loads(assignment.student_text)
    keep = next(i for i, c in enumerate(notebook["cells"]) if "# vlab: params" in "".join(c["source"])) + 1
    escape: dict[str, Any] = {
        "cell_type": "code", "id": "escape", "metadata": {}, "outputs": [], "execution_count": None,
        "source": ESCAPE_CELL.format(targets=[str(bundle_file), str(secret_file), str(hidden)]),
    }
    notebook["cells"] = [*notebook["cells"][:keep], escape]
    submission = tmp_path / "submissions" / "mallory.ipynb"
    submission.parent.mkdir()
    submission.write_text(json.dumps(notebook))
    result = grade_notebook(submission, assignment.bundle, "mallory")
    (error,) = [e for e in result["cell_errors"] if e["ename"] == "RuntimeError"]
    assert "refused=3 read=0 done" in error["evalue"], error["evalue"]
    assert "READ" not in error["evalue"] and "UNMOUNTED" not in error["evalue"], error["evalue"]
    assert result["total"] == 0
