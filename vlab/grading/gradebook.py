"""The gradebook: one CSV for the course, JSON and HTML feedback per student, a summary.

Feedback never shows a hidden check's code or message: hidden checks appear by name and
pass/fail only (:meth:`~vlab.grading.checks.CheckResult.as_dict` with ``reveal=False``). All
files are written to a temporary name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlab.files import write_atomic
from vlab.grading.results import SubmissionResult

__all__ = ["feedback", "feedback_html", "format_summary", "summarize", "write_gradebook"]


def feedback(result: SubmissionResult) -> dict[str, Any]:
    """What a student may see of their result (JSON): hidden checks by name and pass/fail only."""
    data = result.to_dict()
    checks = []
    for check in result.checks:
        entry = dict(check)
        if entry.get("hidden"):
            entry["message"] = ""
        checks.append(entry)
    keep = (
        "student",
        "lab",
        "status",
        "questions",
        "total",
        "max",
        "cell_errors",
        "tampered_cells",
        "leftovers",
        "export_problems",
        "notes",
        "isolation",
    )
    return {**{k: data[k] for k in keep}, "checks": checks}


def feedback_html(result: SubmissionResult) -> str:
    """The feedback as a small self-contained HTML page."""
    data = feedback(result)
    esc = html.escape
    rows = []
    for qid, q in (data["questions"] or {}).items():
        mark = " (read-only cell edited: 0 points)" if q.get("tampered") else ""
        rows.append(f"<h3>{esc(qid)}: {q['score']:g} / {q['max']:g}{esc(mark)}</h3><table>")
        for c in data["checks"]:
            if c["question"] != qid:
                continue
            state = "pass" if c["passed"] else "fail"
            kind = "hidden" if c["hidden"] else "public"
            rows.append(
                f"<tr class='{state}'><td>{state}</td><td><code>{esc(c['name'])}</code></td><td>{kind}</td>"
                f"<td>{c['points']:g}</td><td>{esc(c['message'])}</td></tr>"
            )
        rows.append("</table>")
    problems = [f"cell {e['cell']}: {e['ename']}: {e['evalue']}" for e in data["cell_errors"] or []]
    problems += [f"read-only cell {t['cell']} was {t['problem']}" for t in data["tampered_cells"] or []]
    problems += [f"left running, killed: {p['command']}" for p in data["leftovers"] or []]
    problems += [f"export of {k}: {v}" for k, v in (data["export_problems"] or {}).items()]
    problems += list(data["notes"] or [])
    listed = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>Lab {esc(str(data['lab']))}: {esc(data['student'])}</title>"
        "<style>body{font-family:sans-serif}.pass td:first-child{color:green}"
        ".fail td:first-child{color:crimson}td{padding:2px 8px}</style>"
        f"<h1>Lab {esc(str(data['lab']))} — {esc(data['student'])}</h1>"
        f"<p><b>{data['total']:g} / {data['max']:g}</b> points, status <code>{esc(data['status'])}</code></p>"
        + "".join(rows)
        + (f"<h2>Problems</h2><ul>{listed}</ul>" if listed else "")
    )


def summarize(results: Sequence[SubmissionResult], seconds: float | None = None) -> dict[str, Any]:
    """Counts by status, mean and median total, mean per question."""
    totals = [r.total for r in results]
    questions: dict[str, list[float]] = {}
    for r in results:
        for qid, q in r.questions.items():
            questions.setdefault(qid, []).append(q.score)
    return {
        "submissions": len(results),
        "status": dict(sorted(Counter(r.status for r in results).items())),
        "isolation": sorted({r.isolation for r in results}),
        "max": results[0].max if results else 0,
        "mean_total": round(statistics.fmean(totals), 3) if totals else 0,
        "median_total": statistics.median(totals) if totals else 0,
        "mean_per_question": {q: round(statistics.fmean(s), 3) for q, s in questions.items()},
        "leftover_processes_killed": sum(len(r.leftovers) for r in results),
        "seconds": seconds,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    lines = [
        f"{summary['submissions']} submissions, mean {summary['mean_total']:g} / {summary['max']:g}, "
        f"median {summary['median_total']:g}",
        "status: " + ", ".join(f"{k} {v}" for k, v in summary["status"].items()),
        "per question: " + ", ".join(f"{q} {m:g}" for q, m in summary["mean_per_question"].items()),
    ]
    if summary["leftover_processes_killed"]:
        lines.append(f"processes left running and killed: {summary['leftover_processes_killed']}")
    if summary.get("seconds") is not None:
        lines.append(f"graded in {summary['seconds']:.1f} s")
    return "\n".join(lines)


def write_gradebook(
    results: Sequence[SubmissionResult], csv_path: Path | str, *, seconds: float | None = None
) -> dict[str, Any]:
    """Write the CSV, ``feedback/<student>.json|.html`` and ``<stem>-summary.json`` next to it.

    :returns: the summary.
    """
    csv_path = Path(csv_path)
    ordered = sorted(results, key=lambda r: r.student)
    questions: list[str] = []
    for r in ordered:
        questions.extend(q for q in r.questions if q not in questions)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "lab", *questions, "total", "max", "status", "isolation"])
    for r in ordered:
        scores = [f"{r.questions[q].score:g}" if q in r.questions else "" for q in questions]
        row = [r.student, r.lab, *scores, f"{r.total:g}", f"{r.max:g}", r.status, r.isolation]
        writer.writerow(row)
    feedback_dir = csv_path.parent / "feedback"
    feedback_dir.mkdir(parents=True, exist_ok=True)
    for r in ordered:  # grades are private: 0600 like the gradebook
        write_atomic(feedback_dir / f"{r.student}.json", json.dumps(feedback(r), indent=1) + "\n", 0o600)
        write_atomic(feedback_dir / f"{r.student}.html", feedback_html(r), 0o600)
    summary = summarize(ordered, seconds)
    write_atomic(csv_path.parent / f"{csv_path.stem}-summary.json", json.dumps(summary, indent=1) + "\n", 0o600)
    write_atomic(csv_path, buffer.getvalue(), 0o600)
    return summary
