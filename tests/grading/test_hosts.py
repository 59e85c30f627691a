"""The helper host and the student host as grading starts them: two real processes in a real jail.

Each test gives :class:`~vlab.grading.hosts.Hosts` a locked cell's helpers and a student's functions as
source, the way the sandbox does, and calls them as checks do.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.grading.conftest import jail_spec
from tests.grading.unprivileged import NOBODY, available, unprivileged
from vlab.grading.checks import StudentCodeError
from vlab.grading.exports import Exported
from vlab.grading.hosts import Hosts
from vlab.grading.jail import namespace_members

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="uid switching and namespaces need root")
HOST = [sys.executable, "-I", "-m", "vlab.grading.hosts"]
THROWAWAY = 1_999_999_998


def _hosts(
    place: Path, student: str, helpers: str = "", timeout: float = 20, wrap: Any = None, **jail: object
) -> Hosts:
    functions = {name: student for name in _defined(student)}
    spec = jail_spec(place, inner=(*HOST, "STUDENT"), **jail)
    exports = Exported(functions=functions, modules={"math": "math"}, values={"SCALE": 3})
    command = spec.command([*HOST, "HELPERS"])
    return Hosts(wrap(command) if wrap else command, timeout, {"PATH": "/usr/bin:/bin"}, [helpers], exports)


def _defined(source: str) -> list[str]:
    import ast

    return [node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]


@pytest.fixture
def started() -> Iterator[list[Hosts]]:
    made: list[Hosts] = []
    yield made
    for hosts in made:
        hosts.close()


STUDENT = '''
def answer(x):
    return math.sqrt(x) * SCALE

def loops():
    while True:
        pass

def fails():
    return 1 / 0

def huge():
    return "x" * (33 * 2**20)

def exits():
    import os
    os._exit(3)
'''


def test_functions_run_in_the_student_host_with_a_timeout(place: Path, started: list[Hosts]) -> None:
    hosts = _hosts(place, STUDENT, timeout=4)
    started.append(hosts)
    assert hosts.call("answer", [16], {}) == pytest.approx(math.sqrt(16) * 3)
    with pytest.raises(StudentCodeError, match="ZeroDivisionError"):
        hosts.call("fails", [], {})
    with pytest.raises(StudentCodeError, match="did not return within 4 s"):
        hosts.call("loops", [], {})
    assert hosts.call("answer", [4], {}) == 6  # both started again after the kill
    with pytest.raises(StudentCodeError, match="cannot read"):  # its 33 MiB reach the helper, not the grader
        hosts.call("huge", [], {})
    assert hosts.call("answer", [4], {}) == 6
    with pytest.raises(StudentCodeError, match="cannot go on: it exited"):
        hosts.call("exits", [], {})
    assert hosts.call("answer", [9], {}) == 9


# A helper that judges in the same expression as it calls the student: what the student function does
# while it runs must not change what the helper computes (issue 11, "hole B").
JUDGE = '''
import vlab.grading.format as fmt


def judged(case):
    return [fmt.digest(repr(student_sort(list(case)))) == fmt.digest(repr(sorted(case))), sorted(case)]
'''
PATCHER = '''
def student_sort(xs):
    import builtins, gc, sys
    import vlab.grading.format as f
    builtins.sorted = lambda seq, *args, **kwargs: list(seq)
    f.digest = lambda text: "same"
    frame = sys._getframe(1)
    while frame is not None:
        frame.f_globals["sorted"] = builtins.sorted
        frame = frame.f_back
    for obj in gc.get_objects():
        if getattr(obj, "__name__", "") == "judged" and hasattr(obj, "__code__"):
            obj.__code__ = (lambda case: [True, list(case)]).__code__
    return list(xs)
'''


def test_a_student_function_cannot_change_the_helper_that_calls_it(place: Path, started: list[Hosts]) -> None:
    hosts = _hosts(place, PATCHER, JUDGE)
    started.append(hosts)
    assert hosts.call("judged", [[3, 1, 2]], {}) == [False, [1, 2, 3]]
    assert hosts.call("judged", [[2, 1]], {}) == [False, [1, 2]]  # nor in a later call
    assert hosts.call("student_sort", [[2, 1]], {}) == [2, 1]  # the student's own process is patched


WATCHER = '''
import os


def views():
    student = student_view()
    mine = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return {"student": student, "helper_sees": len(mine)}
'''
ATTACKER = '''
def student_view():
    import os, signal
    seen = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in seen:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
    os.write(1, b'{"ok": "forged"}\\n')  # the grader's reply pipe, if it had it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(0, signal.SIGTERM)  # its process group: the kernel signals members in other pid namespaces too
    os.system("setsid sleep 1000 &")
    return {"pids": seen, "mine": os.getpid(), "uid": os.getuid()}
'''


@root_only
def test_the_student_host_cannot_see_the_helper_host_which_sees_it(place: Path, started: list[Hosts]) -> None:
    os.chown(place / "work", THROWAWAY, THROWAWAY)
    hosts = _hosts(place, ATTACKER, WATCHER, mode="root", uid=THROWAWAY)
    started.append(hosts)
    got = hosts.call("views", [], {})
    student = got["student"]
    assert student["uid"] == THROWAWAY
    assert student["pids"] == [1, student["mine"]]  # its namespace's first process and itself: no helper
    assert got["helper_sees"] > 3  # the jail's init, itself, and the student's namespace below
    assert "forged" not in json.dumps(got)
    assert hosts.call("views", [], {})["student"]["uid"] == THROWAWAY  # the helper was not stopped
    proc = hosts._proc
    assert proc is not None
    members = namespace_members(proc.pid)
    sleepers = [pid for pid in members if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(sleepers) == 2  # the student's daemons, in the nested namespace: found by the sweep
    hosts.close()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in sleepers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in sleepers)


@pytest.mark.skipif(not available(), reason="needs root to set up the unprivileged user, unshare and setpriv")
def test_without_root_the_student_host_cannot_see_the_helper_host_either(place: Path, started: list[Hosts]) -> None:
    for directory in ("work", "stage"):
        os.chown(place / directory, NOBODY, NOBODY)
    (place / "root").mkdir()
    hosts = _hosts(place, ATTACKER, WATCHER, mode="userns", wrap=lambda argv: unprivileged(argv, place / "root"))
    started.append(hosts)
    got = hosts.call("views", [], {})
    student = got["student"]
    assert student["uid"] == 0  # "root" of a user namespace that owns nothing
    assert student["pids"] == [1, student["mine"]] and got["helper_sees"] > 3
    assert "forged" not in json.dumps(got)
    assert hosts.call("views", [], {})["student"]["uid"] == 0


@root_only
def test_the_helper_host_is_not_dumpable(place: Path, started: list[Hosts]) -> None:
    os.chown(place / "work", THROWAWAY, THROWAWAY)
    hosts = _hosts(place, ATTACKER, WATCHER, mode="root", uid=THROWAWAY)
    started.append(hosts)
    hosts.call("views", [], {})
    proc = hosts._proc
    assert proc is not None
    hosts_by_role = {}
    for pid in namespace_members(proc.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[1:4] == [b"-I", b"-m", b"vlab.grading.hosts"]:
            hosts_by_role[argv[4].decode()] = pid
    assert Path(f"/proc/{hosts_by_role['HELPERS']}/environ").stat().st_uid == 0  # undumpable: root's
    assert Path(f"/proc/{hosts_by_role['STUDENT']}/environ").stat().st_uid == THROWAWAY  # the control
