"""How many submissions `vlab grade` grades per minute per core, for the example lab.

Grades N copies of a correct submission of tests/grading/data/source/00-example.ipynb through
the full sandbox (supervisor process, jailed kernel, export, checks in a jailed host, sweep),
with one worker per core, and compares with a baseline measured in the same run: executing the
same notebook with a bare nbclient (no sandbox, no checks), one after another.

    .venv/bin/python bench/bench_grading.py [--submissions 12] [--workers 2]

Target: ≥ 10 submissions per minute per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "grading"))

import grading_submissions as subs  # noqa: E402

from vlab.grading.assign import build  # noqa: E402
from vlab.grading.runner import grade_all, make_jobs  # noqa: E402

SOURCE = REPO / "tests" / "grading" / "data" / "source" / "00-example.ipynb"
TARGET_PER_MINUTE_PER_CORE = 10


def bare_nbclient_seconds(path: Path, runs: int) -> list[float]:
    """Baseline: the notebook executed by nbclient in this process, without any sandbox."""
    import nbformat
    from nbclient import NotebookClient

    times = []
    for _ in range(runs):
        notebook = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        NotebookClient(notebook, timeout=60, allow_errors=True, kernel_name="python3").execute()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=12)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    assignment = build(SOURCE)
    with tempfile.TemporaryDirectory(prefix="vlab-bench-") as tmp:
        root = Path(tmp)
        text = subs.build_submission(assignment.student_text, subs.CORRECT, [])
        found = [(f"s{i:03d}", subs.write(root, f"s{i:03d}", text)) for i in range(args.submissions)]
        jobs = make_jobs(found, assignment.bundle, secret="bench")

        baseline = bare_nbclient_seconds(found[0][1], 3)
        started = time.perf_counter()
        results = grade_all(jobs, workers=args.workers, progress=False)
        elapsed = time.perf_counter() - started

    wrong = [r["student"] for r in results if (r["total"], r["status"]) != (8, "ok")]
    if wrong:
        print(f"error: these submissions were not graded 8/8 ok: {wrong}", file=sys.stderr)
        return 1
    cores = min(args.workers, os.cpu_count() or 1)
    per_minute_per_core = len(results) / elapsed * 60 / cores
    supervisor = statistics.median(r["seconds"] for r in results)
    bare = statistics.median(baseline)
    bare_rate = 60 / bare
    print(
        json.dumps({"submissions": len(results), "workers": args.workers, "cores": cores, "wall_s": round(elapsed, 2)})
    )
    print(
        f"graded: {per_minute_per_core:.1f} submissions/min/core "
        f"(target ≥ {TARGET_PER_MINUTE_PER_CORE}: {'met' if per_minute_per_core >= 10 else 'NOT met'})"
    )
    print(f"median time in the supervisor per submission: {supervisor:.2f} s")
    print(f"baseline, bare nbclient execution of the same notebook (serial): {bare:.2f} s = {bare_rate:.1f}/min")
    print(f"sandboxed grading vs bare execution, per core: {per_minute_per_core / bare_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
