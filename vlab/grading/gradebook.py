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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlab.files import write_atomic
from vlab.grading.results import SubmissionResult

__all__ = ["Summary", "feedback", "feedback_html", "format_summary", "summarize", "write_gradebook"]


def feedback(result: SubmissionResult) -> dict[str, Any]:  # the JSON form: written as feedback/<student>.json
    """What a student may see of their result (JSON): hidden checks by name and pass/fail only."""
    data = result.to_dict()
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
    return {**{k: data[k] for k in keep}, "checks": [c.as_dict(reveal=False) for c in result.checks]}


def feedback_html(result: SubmissionResult) -> str:
    """The feedback as a small self-contained HTML page (what :func:`feedback` shows, no more)."""
    esc = html.escape
    rows = []
    for qid, q in result.questions.items():
        mark = " (read-only cell edited: 0 points)" if q.tampered else ""
        rows.append(f"<h3>{esc(qid)}: {q.score:g} / {q.max:g}{esc(mark)}</h3><table>")
        for c in result.checks:
            if c.question != qid:
                continue
            shown = c.as_dict(reveal=False)["message"]  # never a hidden check's message
            state = c.outcome
            kind = "hidden" if c.hidden else "public"
            rows.append(
                f"<tr class='{state}'><td>{state}</td><td><code>{esc(c.name)}</code></td><td>{kind}</td>"
                f"<td>{c.points:g}</td><td>{esc(str(shown))}</td></tr>"
            )
        rows.append("</table>")
    problems = [f"cell {e.cell}: {e.ename}: {e.evalue}" for e in result.cell_errors]
    problems += [f"read-only cell {t.cell} was {t.problem}" for t in result.tampered_cells]
    problems += [f"left running, killed: {p.command}" for p in result.leftovers]
    problems += [f"export of {k}: {v}" for k, v in result.export_problems.items()]
    problems += result.notes
    listed = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>Lab {esc(result.lab)}: {esc(result.student)}</title>"
        "<style>body{font-family:sans-serif}.pass td:first-child{color:green}"
        ".fail td:first-child{color:crimson}.unchecked td:first-child{color:gray}td{padding:2px 8px}</style>"
        f"<h1>Lab {esc(result.lab)} — {esc(result.student)}</h1>"
        f"<p><b>{result.total:g} / {result.max:g}</b> points, status <code>{esc(result.status)}</code></p>"
        + "".join(rows)
        + (f"<h2>Problems</h2><ul>{listed}</ul>" if listed else "")
    )


@dataclass(frozen=True)
class Summary:
    """A batch at a glance (``<csv stem>-summary.json``, :meth:`to_dict`; printed by :func:`format_summary`)."""

    submissions: int
    status: dict[str, int]  # status → how many submissions have it
    isolation: list[str]
    max: float
    mean_total: float
    median_total: float
    mean_per_question: dict[str, float]
    leftover_processes_killed: int
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:  # the JSON form (the summary file)
        return asdict(self)


def summarize(results: Sequence[SubmissionResult], seconds: float | None = None) -> Summary:
    """Counts by status, mean and median total, mean per question."""
    totals = [r.total for r in results]
    questions: dict[str, list[float]] = {}
    for r in results:
        for qid, q in r.questions.items():
            questions.setdefault(qid, []).append(q.score)
    return Summary(
        submissions=len(results),
        status=dict(sorted(Counter(r.status for r in results).items())),
        isolation=sorted({r.isolation for r in results}),
        max=results[0].max if results else 0,
        mean_total=round(statistics.fmean(totals), 3) if totals else 0,
        median_total=statistics.median(totals) if totals else 0,
        mean_per_question={q: round(statistics.fmean(s), 3) for q, s in questions.items()},
        leftover_processes_killed=sum(len(r.leftovers) for r in results),
        seconds=seconds,
    )


def format_summary(summary: Summary) -> str:
    """The summary as a few lines of text."""
    lines = [
        f"{summary.submissions} submissions, mean {summary.mean_total:g} / {summary.max:g}, "
        f"median {summary.median_total:g}",
        "status: " + ", ".join(f"{k} {v}" for k, v in summary.status.items()),
        "per question: " + ", ".join(f"{q} {m:g}" for q, m in summary.mean_per_question.items()),
    ]
    if summary.leftover_processes_killed:
        lines.append(f"processes left running and killed: {summary.leftover_processes_killed}")
    if summary.seconds is not None:
        lines.append(f"graded in {summary.seconds:.1f} s")
    return "\n".join(lines)


def write_gradebook(
    results: Sequence[SubmissionResult], csv_path: Path | str, *, seconds: float | None = None
) -> Summary:
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
    summary_text = json.dumps(summary.to_dict(), indent=1) + "\n"
    write_atomic(csv_path.parent / f"{csv_path.stem}-summary.json", summary_text, 0o600)
    write_atomic(csv_path, buffer.getvalue(), 0o600)
    return summary
