"""Synthetic submissions for the example lab (tests/grading/data/source/00-example.ipynb).

Each submission is the generated student notebook with some cells answered, broken or added:
``SUBMISSIONS[name] = (answers, extra_cells, expected_total, expected_status)``. ``answers`` maps a
cell id of the student notebook to its new source; ``extra_cells`` are (after_cell_id, source)
pairs inserted into the notebook. The expected scores are out of 8 (q1 3, q2 3, q3 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
EXAMPLE_SOURCE = DATA / "source" / "00-example.ipynb"

Q1, Q2, Q3, Q3_READONLY = "c04", "c08", "c13", "c12"

FIB = """# vlab: solution q1
def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a"""

WALK = """# vlab: solution q2 exports=walk_entries,answer_q2
def walk_entries(guest_levels, host_levels):
    return (guest_levels + 1) * (host_levels + 1) - 1


answer_q2 = walk_entries(PARAMS["guest_levels"], PARAMS["host_levels"])"""

MEAN = """# vlab: solution q3 exports=mean_latency
mean_latency = sum(SAMPLES) / len(SAMPLES)"""

CORRECT = {Q1: FIB, Q2: WALK, Q3: MEAN}

# the misconception the public check walk_4x4 names: adding the two walks
WALK_ADDED = WALK.replace("return (guest_levels + 1) * (host_levels + 1) - 1", "return guest_levels + host_levels")

# correct for small n, never returns for large n: the hidden fib_90 call times out
FIB_HANGS = FIB.replace("    a, b = 0, 1", "    while n > 50:\n        pass\n    a, b = 0, 1")

SYNTAX_ERROR = "# vlab: solution q1\ndef fib(n)\n    return n"

INFINITE_LOOP = "while True:\n    pass"

MEMORY_HOG = """def hog():
    blocks = []
    while True:
        blocks.append(bytearray(64 * 2**20))


hog()"""

# exponential, and the children never return into the kernel's code
FORK_BOMB = """import os
import time


def multiply():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.05)


while True:
    if os.fork() == 0:
        multiply()"""

MONKEYPATCH = """import vlab
import vlab.grading
import vlab.grading.checks as checks

checks.run_checks = lambda cs, sub, params: [
    checks.CheckResult(c.question, c.name, c.points, c.hidden, True) for c in cs
]
checks.CheckResult.score = property(lambda self: self.points)
vlab.check = vlab.grading.check = lambda question: print("all checks passed!")


def fib(n):
    # runs where the grader calls it: patch that process too
    import vlab.grading.checks as c
    c.CheckResult.passed = True
    c.run_checks = lambda *a: []
    raise NotImplementedError"""

TAMPERED_READONLY = """# vlab: readonly q3
SAMPLES = [1.0, 2.0]  # easier numbers
SAMPLES"""

KERNEL_SUICIDE = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"


def steal_cell(bundle: str, secret_file: str) -> str:
    """Reads the autograder bundle and the secret file, then reports what it got as an error."""
    return f"""import os
stolen = {{}}
for path in [{bundle!r}, {secret_file!r}]:
    try:
        with open(path) as handle:
            stolen[path] = "READ " + handle.read()[:40]
    except OSError as exc:
        stolen[path] = type(exc).__name__
leak = os.environ.get("VLAB_GRADING_SECRET", "absent")
raise RuntimeError(f"stolen={{stolen}} leak={{leak}}")"""


def vm_cell(marker: str) -> str:
    # The vlab.VM API is written in parallel by another engineer, so this starts a real QEMU directly:
    # daemonized (re-parented away from the kernel, own session). tb-size keeps its JIT buffer under
    # the example lab's 1 GiB address-space limit (QEMU reserves 1 GiB by default).
    return f"""import subprocess
subprocess.run(["qemu-system-x86_64", "-M", "none", "-accel", "tcg,tb-size=64", "-display", "none",
                "-nodefaults", "-daemonize", "-name", {marker!r}], check=True)"""


def build_submission(student_text: str, answers: dict[str, str], extra: list[tuple[str, str]]) -> str:
    """The student notebook with ``answers`` replacing cells and ``extra`` cells inserted."""
    notebook: dict[str, Any] = json.loads(student_text)
    cells = notebook["cells"]
    for cell in cells:
        if cell["id"] in answers:
            cell["source"] = answers[cell["id"]]
    for number, (after, source) in enumerate(extra):
        position = next(i for i, c in enumerate(cells) if c["id"] == after) + 1
        cells.insert(
            position,
            {
                "cell_type": "code",
                "id": f"extra{number}",
                "metadata": {},
                "source": source,
                "outputs": [],
                "execution_count": None,
            },
        )
    return json.dumps(notebook, indent=1)


def write(root: Path, student: str, text: str, layout: str = "dir") -> Path:
    """Store a submission as ROOT/<student>/00-example.ipynb (layout 'dir') or ROOT/<student>.ipynb."""
    path = root / student / "00-example.ipynb" if layout == "dir" else root / f"{student}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
