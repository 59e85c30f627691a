"""How long each lab takes headless: every source notebook (the solutions) executed top to bottom in a fresh
kernel, as nbval and the grader run it, against the 90 s budget each lab has on 2 cores with TCG.

The baseline, measured in the same run, is an empty notebook through the same client (kernel start and
shutdown): the lab's own cost is the difference. Prints, never asserts.

    .venv/bin/python bench/bench_labs.py [--labs 01 03 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

SOURCES = Path(__file__).resolve().parents[1] / "labs" / "source"
#: seconds a lab may take headless on 2 cores with TCG (issues 14, 15, 17)
BUDGET_S = 90.0


def run_seconds(notebook: nbformat.NotebookNode, cwd: Path) -> float:
    started = time.monotonic()
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", nargs="*", help="lab numbers (default: all)")
    args = parser.parse_args()
    empty = run_seconds(nbformat.v4.new_notebook(), SOURCES)  # type: ignore[no-untyped-call]
    print(f"baseline: an empty notebook (kernel start and stop) {empty:.1f} s")
    print(f"{'lab':32} {'seconds':>8} {'÷ budget':>9}")
    for source in sorted(SOURCES.glob("[0-9][0-9]-*.ipynb")):
        if args.labs and source.name[:2] not in args.labs:
            continue
        seconds = run_seconds(nbformat.read(source, as_version=4), SOURCES)  # type: ignore[no-untyped-call]
        verdict = "ok" if seconds <= BUDGET_S else "OVER"
        print(f"{source.name:32} {seconds:8.1f} {seconds / BUDGET_S:8.2f}×  {verdict}  "
              f"(lab alone: {seconds - empty:.1f} s)")


if __name__ == "__main__":
    main()
