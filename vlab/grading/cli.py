"""``vlab assign`` and ``vlab grade``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlab.errors import VlabError
from vlab.paths import repo_root

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the grading sub-commands to the ``vlab`` command line."""
    assign = subparsers.add_parser(
        "assign",
        help="write student notebooks and autograder bundles from lab sources",
        description="labs/source/NN-x.ipynb → labs/NN-x.ipynb (student) + labs/autograder/NN.json (bundle).",
    )
    assign.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="source notebooks")
    assign.add_argument("--out", type=Path, help="directory for student notebooks (default: SOURCE/../..)")
    assign.add_argument("--check", action="store_true", help="write nothing; exit 1 if any output is stale")
    assign.add_argument(
        "--course",
        default=None,
        help="course id written into every copy and the bundle (the seeds depend on it; default: self-study)",
    )
    assign.add_argument(
        "--roster",
        type=Path,
        help="one student id per line: also write OUT/release/<student>/NN-x.ipynb, a copy that knows its student",
    )
    assign.set_defaults(func=_assign)

    grade = subparsers.add_parser(
        "grade",
        help="grade submissions in a sandbox into a gradebook",
        description="Runs every SUBMISSIONS/<student>/NN-*.ipynb (or <student>.ipynb) in its own sandbox.",
    )
    grade.add_argument("submissions", type=Path, metavar="SUBMISSIONS")
    grade.add_argument("--lab", required=True, help="lab id, e.g. 03")
    grade.add_argument("--bundle", type=Path, help="autograder bundle (default: labs/autograder/NN.json)")
    grade.add_argument("--workers", type=int, default=None, help="parallel submissions (default: CPUs)")
    grade.add_argument("--out", type=Path, default=Path("gradebook.csv"), help="gradebook CSV")
    grade.add_argument("--dask", metavar="ADDRESS", help="send the jobs to this Dask scheduler")
    grade.add_argument(
        "--same-uid",
        action="store_true",
        help="as root, run student code as root (weaker; for images only root can read)",
    )
    grade.add_argument("--no-progress", action="store_true", help="no progress bar")
    grade.set_defaults(func=_grade)


def _read_roster(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VlabError("cannot read the roster", field="--roster", value=str(path), detail=str(exc)) from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _assign(args: argparse.Namespace) -> int:
    from vlab.grading.assign import assign, is_stale
    from vlab.grading.seeds import DEFAULT_COURSE

    course = args.course or DEFAULT_COURSE
    roster = _read_roster(args.roster) if args.roster else None
    stale = []
    for source in args.sources:
        if args.check:
            if is_stale(source, args.out, course=course):
                stale.append(str(source))
            continue
        result = assign(source, args.out, course=course, roster=roster)
        print(f"{source} → {result.student_path} + {result.bundle_path}")
        if result.released:
            where = result.released[0][1].parent.parent
            print(f"  {len(result.released)} released copies in {where}/<student>/{result.student_path.name}")
    for source in stale:
        print(f"stale: {source} (run `vlab assign {source}`)")
    return 1 if stale else 0


def _default_bundle(lab: str) -> Path:
    for base in (Path.cwd(), repo_root()):
        candidate = base / "labs" / "autograder" / f"{lab}.json"
        if candidate.exists():
            return candidate
    return Path("labs") / "autograder" / f"{lab}.json"


def _grade(args: argparse.Namespace) -> int:
    from vlab.grading.gradebook import format_summary, write_gradebook
    from vlab.grading.runner import find_submissions, grade_all, load_bundle, make_jobs

    if args.workers is not None and args.workers < 1:
        raise VlabError("must be at least 1", field="--workers", value=args.workers)
    bundle_path = args.bundle or _default_bundle(args.lab)
    bundle = load_bundle(bundle_path)
    if str(bundle["lab"]) != str(args.lab):
        raise VlabError(
            f"the bundle is for lab {bundle['lab']}",
            field="--lab",
            value=args.lab,
            fix=f"pass --lab {bundle['lab']} or the bundle of lab {args.lab}",
        )
    if bundle_path.stat().st_mode & 0o004:
        print(
            f"warning: {bundle_path} is world-readable: hidden checks are not hidden from other users", file=sys.stderr
        )
    submissions, skipped = find_submissions(args.submissions, args.lab)
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    if not submissions:
        raise VlabError(
            "no submissions found",
            field="SUBMISSIONS",
            value=str(args.submissions),
            fix=f"lay them out as <student>/{args.lab}-*.ipynb or <student>.ipynb",
        )
    hide = [str(args.submissions.resolve()), str(bundle_path.resolve())]
    jobs = make_jobs(submissions, bundle, throwaway_uid=not args.same_uid, hide=hide, embed=bool(args.dask))
    started = time.monotonic()
    results = grade_all(jobs, workers=args.workers, dask=args.dask, progress=not args.no_progress)
    summary = write_gradebook(results, args.out, seconds=time.monotonic() - started)
    print(format_summary(summary))
    print(f"gradebook: {args.out}  feedback: {args.out.parent / 'feedback'}")
    return 0
