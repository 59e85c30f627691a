"""How many submissions `vlab grade` grades per minute per core, for the example lab.

Grades N copies of a correct submission of tests/grading/data/source/00-example.ipynb through
the full sandbox (supervisor process; kernel and the helper and student hosts in allow-list roots with new
mount, pid, network namespaces and a throw-away uid or a user namespace; export; checks; sweep),
with one worker per core, and compares with a baseline measured in the same run: the same
notebooks executed by a bare nbclient (a process each, same parallelism, no sandbox, no checks).
The machine's load average is printed too: the rates are only comparable at similar load.

    .venv/bin/python bench/bench_grading.py [--submissions 12] [--workers 2]

Target: ≥ 10 submissions per minute per core.

``--vm-lab [SOURCE]`` instead grades the solution of a lab whose notebook starts VMs (default: lab 99 of the
grader's tests, two VMs; or e.g. labs/source/04-scheduling.ipynb) ``--submissions`` times, alternating with the
same notebook made to boot every VM cold (``VLAB_COLD_BOOT=1`` set by a cell after the first solution cell: what
grading did before graded VMs could restore from root's templates), and reports the median time in the
supervisor of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.grading import grading_submissions as subs  # noqa: E402
from vlab.grading.assign import build  # noqa: E402
from vlab.grading.bundle import Bundle  # noqa: E402
from vlab.grading.runner import grade_all, make_jobs  # noqa: E402

SOURCE = REPO / "tests" / "grading" / "data" / "source" / "00-example.ipynb"
TARGET_PER_MINUTE_PER_CORE = 10


_BARE = """
import sys
sys.modules["rfc3987_syntax"] = None  # as in the supervisor: skip jsonschema's slow optional import
import nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(notebook, timeout=60, allow_errors=True, kernel_name="python3").execute()
"""


def bare_nbclient_wall(paths: list[Path], workers: int) -> float:
    """Baseline: the same notebooks executed by a bare nbclient, one process each, same parallelism,
    no sandbox and no checks."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = pool.map(lambda p: subprocess.run([sys.executable, "-c", _BARE, str(p)], capture_output=True), paths)
        failed = [r for r in runs if r.returncode != 0]
    if failed:
        raise RuntimeError(failed[0].stderr.decode()[-2000:])
    return time.perf_counter() - started


def vm_lab(source: Path, rounds: int) -> int:
    """Grade ``source``'s solution ``rounds`` times restoring its VMs and as many times booting them cold."""
    from vlab.grading.format import cell_spec
    from vlab.grading.sandbox import Job, grade_submission
    from vlab.grading.testing import solution_notebook_text

    assignment = build(source)
    bundle = Bundle.from_dict(assignment.bundle)
    texts = {"default (restore)": solution_notebook_text(source)}
    notebook = json.loads(texts["default (restore)"])
    first = next(i for i, c in enumerate(notebook["cells"]) if cell_spec(c, i).role == "solution")
    notebook["cells"].insert(first + 1, {"cell_type": "code", "id": "bench-cold", "metadata": {}, "outputs": [],
                                         "execution_count": None,
                                         "source": 'import os\nos.environ["VLAB_COLD_BOOT"] = "1"'})
    texts["cold (as before)"] = json.dumps(notebook)
    seconds: dict[str, list[float]] = {label: [] for label in texts}
    with tempfile.TemporaryDirectory(prefix="vlab-bench-") as tmp:
        os.chmod(tmp, 0o711)
        for _ in range(rounds):
            for label, text in texts.items():
                path = Path(tmp) / "solution.ipynb"
                path.write_text(text)
                result = grade_submission(Job(str(path), "bench-student", bundle))
                seconds[label].append(result.seconds)
                print(f"  {label}: {result.seconds:.2f} s, {result.total:g}/{result.max:g} {result.status}",
                      flush=True)
    print(json.dumps({"lab": bundle.lab, "rounds": rounds, "load_average_1min": os.getloadavg()[0]}))
    for label, values in seconds.items():
        print(f"median time in the supervisor, {label}: {statistics.median(values):.2f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=12)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--vm-lab", nargs="?", type=Path, const=REPO / "tests/grading/data/source/99-vms.ipynb",
                        help="time grading a lab that starts VMs: restored vs cold (see the module docstring)")
    args = parser.parse_args()
    if args.vm_lab is not None:
        return vm_lab(args.vm_lab, args.submissions)

    assignment = build(SOURCE)
    with tempfile.TemporaryDirectory(prefix="vlab-bench-") as tmp:
        root = Path(tmp)
        text = subs.build_submission(assignment.student_text, subs.CORRECT, [])
        found = [(f"s{i:03d}", subs.write(root, f"s{i:03d}", text)) for i in range(args.submissions)]
        jobs = make_jobs(found, Bundle.from_dict(assignment.bundle))  # isolation "auto": never unisolated

        started = time.perf_counter()
        results = grade_all(jobs, workers=args.workers, progress=False)
        elapsed = time.perf_counter() - started
        bare_wall = bare_nbclient_wall([path for _, path in found], args.workers)

    wrong = [r.student for r in results if (r.total, r.status) != (8, "ok")]
    if wrong:
        print(f"error: these submissions were not graded 8/8 ok: {wrong}", file=sys.stderr)
        return 1
    isolation = sorted({r.isolation for r in results})
    if isolation not in (["root"], ["userns"]):
        print(f"error: graded without full isolation: {isolation}", file=sys.stderr)
        return 1
    cores = min(args.workers, os.cpu_count() or 1)
    per_minute_per_core = len(results) / elapsed * 60 / cores
    supervisor = statistics.median(r.seconds for r in results)
    bare_rate = len(results) / bare_wall * 60 / cores
    met = "met" if per_minute_per_core >= TARGET_PER_MINUTE_PER_CORE else "NOT met"
    facts = {
        "submissions": len(results),
        "workers": args.workers,
        "cores": cores,
        "wall_s": round(elapsed, 2),
        "bare_wall_s": round(bare_wall, 2),
        "isolation": isolation[0],
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(facts))
    print(f"graded: {per_minute_per_core:.1f} submissions/min/core (target ≥ {TARGET_PER_MINUTE_PER_CORE}: {met})")
    print(f"median time in the supervisor per submission: {supervisor:.2f} s")
    print(f"baseline, bare nbclient execution of the same notebooks: {bare_rate:.1f}/min/core")
    print(f"sandboxed grading (with checks) vs bare execution: {per_minute_per_core / bare_rate:.2f}x the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
