"""Grade one submission, in its own process.

:func:`grade_submission` is what a worker (local or Dask) runs for one :class:`Job`: it starts a
*supervisor* (``python -m vlab.grading.sandbox RESULT_FILE``, the job on stdin) and returns its
result, or a ``grader-error`` result if the supervisor itself failed — one broken submission never
stops a batch. The supervisor, a fresh and trusted process:

1. reads the submission (``invalid`` if it is not a notebook) and compares the read-only cells
   with the bundle's checksums (``tampered``);
2. runs the notebook with nbclient in a kernel started through :mod:`vlab.grading.jail`
   (timeout per cell: the cell is interrupted and the next one runs; timeout per notebook),
   then a last injected cell that exports the lab's names (:mod:`vlab.grading.exports`);
3. notes which processes the notebook left running (QEMU guests, toy VMs), shuts the kernel
   down and sweeps: everything in the submission's cgroup or below the supervisor is killed;
4. runs the bundle's public and hidden checks *here*, on the exports, with student functions
   called in a jailed :class:`~vlab.grading.exports.StudentHost`;
5. removes the cgroup, the working directory and what the throw-away uid left in /tmp, and
   writes the result (a JSON dict, see :func:`empty_result`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlab.grading.assign import DEFAULT_LIMITS, check_namespace
from vlab.grading.checks import CheckResult, Registry, run_checks
from vlab.grading.exports import EXPORTS_FILE, GradedExports, StudentHost, export_cell_source, load_exports
from vlab.grading.format import cell_source, digest
from vlab.grading.jail import (
    Cgroup,
    JailSpec,
    become_subreaper,
    python_paths,
    remove_files_of,
    survivors,
    sweep,
)
from vlab.grading.seeds import DEFAULT_COURSE, seed_for
from vlab.paths import images_dir

__all__ = ["FLAGS", "Job", "Limits", "empty_result", "grade_submission", "status_of"]

#: Status flags in the order the status string lists them.
FLAGS = (
    "invalid",
    "tampered",
    "timeout",
    "memory",
    "processes",
    "kernel-died",
    "errors",
    "unanswered",
    "leftovers",
    "grader-error",
)
_MAX_NOTEBOOK_BYTES = 20 * 2**20
_QUIET_ERRORS = {"NotImplementedError", "CellTimeout", "KeyboardInterrupt", "MemoryError", "BlockingIOError"}


@dataclass(frozen=True)
class Limits:
    """Grading limits of a lab (bundle ``limits``; defaults in :data:`~vlab.grading.assign.DEFAULT_LIMITS`)."""

    cell_timeout: float = DEFAULT_LIMITS["cell_timeout"]
    notebook_timeout: float = DEFAULT_LIMITS["notebook_timeout"]
    memory_mb: int = int(DEFAULT_LIMITS["memory_mb"])
    address_space_mb: int = int(DEFAULT_LIMITS["address_space_mb"])
    processes: int = int(DEFAULT_LIMITS["processes"])
    cpu_percent: int = int(DEFAULT_LIMITS["cpu_percent"])
    call_timeout: float = DEFAULT_LIMITS["call_timeout"]
    file_mb: int = 4096

    @classmethod
    def from_bundle(cls, limits: Mapping[str, Any]) -> Limits:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in limits.items() if k in known})


@dataclass(frozen=True)
class Job:
    """One submission to grade.

    :param submission: path of the notebook (also how results name it).
    :param student: the student id.
    :param bundle: the lab's autograder bundle (parsed JSON).
    :param throwaway_uid: as root, run student code under a throw-away uid (default).
    :param hide: paths student code must not see (the submissions directory, the secret file):
        covered in its private mount namespace (with a throw-away uid only).
    :param notebook: the notebook's text, if the worker cannot read ``submission`` (Dask).
    """

    submission: str
    student: str
    bundle: dict[str, Any]
    throwaway_uid: bool = True
    hide: tuple[str, ...] = ()
    notebook: str | None = None


def empty_result(job: Job) -> dict[str, Any]:
    """The result of a submission before anything ran: every question 0."""
    questions = job.bundle.get("questions", {})
    return {
        "student": job.student,
        "lab": job.bundle.get("lab"),
        "submission": job.submission,
        "status": "ok",
        "flags": [],
        "questions": {
            q: {"score": 0.0, "max": float(info.get("points", 0)), "tampered": False} for q, info in questions.items()
        },
        "total": 0.0,
        "max": float(sum(info.get("points", 0) for info in questions.values())),
        "checks": [],
        "cell_errors": [],
        "tampered_cells": [],
        "leftovers": [],
        "export_problems": {},
        "notes": [],
        "seconds": 0.0,
    }


def status_of(flags: list[str]) -> str:
    """``ok``, or the flags joined by ``+`` in :data:`FLAGS` order."""
    ordered = [f for f in FLAGS if f in flags]
    return "+".join(ordered) if ordered else "ok"


def _flag(result: dict[str, Any], name: str) -> None:
    if name not in result["flags"]:
        result["flags"].append(name)


# --- step 1: read and compare -------------------------------------------------------------------


def _read_submission(job: Job) -> dict[str, Any] | None:
    try:
        text = job.notebook
        if text is None:
            path = Path(job.submission)
            if path.stat().st_size > _MAX_NOTEBOOK_BYTES:
                return None
            text = path.read_text(encoding="utf-8")
        if len(text) > _MAX_NOTEBOOK_BYTES:
            return None
        notebook = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None
    if not all(isinstance(c, dict) and c.get("cell_type") in ("code", "markdown", "raw") for c in notebook["cells"]):
        return None
    return notebook


def _tampered(notebook: dict[str, Any], readonly: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for cell in notebook["cells"]:
        if isinstance(cell.get("id"), str):
            by_id.setdefault(cell["id"], cell)
    found = []
    for entry in readonly:
        cell = by_id.get(entry["cell"])
        if cell is None:
            found.append({**entry, "problem": "deleted"})
        elif digest(cell_source(cell)) != entry["sha256"]:
            found.append({**entry, "problem": "edited"})
    return [{"cell": t["cell"], "question": t["question"], "problem": t["problem"]} for t in found]


# --- step 2 and 3: execute ----------------------------------------------------------------------


@dataclass
class _Run:
    died: bool = False
    notebook_timeout: bool = False
    kernel_pid: int | None = None
    leftovers: list[dict[str, Any]] = field(default_factory=list)
    exported: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)
    kernel_stderr: str = ""
    export_errors: list[str] = field(default_factory=list)

    def record(self, cell: Any, cell_index: int, execute_reply: dict[str, Any] | None) -> None:
        """nbclient's ``on_cell_executed`` hook: keep each failing cell's error from its reply."""
        content = (execute_reply or {}).get("content", {})
        if content.get("status") == "error":
            ename, evalue = str(content.get("ename")), str(content.get("evalue"))[:300]
            self.errors.append({"cell": cell_index, "ename": ename, "evalue": evalue})


def _kernel_manager(spec: JailSpec, workdir: Path) -> Any:
    from jupyter_client.manager import AsyncKernelManager

    class JailedKernelManager(AsyncKernelManager):  # type: ignore[misc]
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return spec.command(super().format_kernel_cmd(extra_arguments))

    manager = JailedKernelManager(kernel_name="python3", transport="ipc", ip=str(workdir / "ipc"))
    manager.connection_file = str(workdir / "kernel.json")
    return manager


async def _execute(
    notebook: Any, export_cell: Any, spec: JailSpec, env: dict[str, str], limits: Limits, cgroup: Cgroup | None
) -> _Run:
    from nbclient import NotebookClient

    run = _Run()
    manager = _kernel_manager(spec, Path(spec.workdir))
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=int(limits.cell_timeout),
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": "CellTimeout",
            "evalue": f"the cell ran longer than {limits.cell_timeout:g} s and was interrupted",
            "traceback": [],
        },
        allow_errors=True,
        shutdown_kernel="immediate",
        record_timing=False,
        startup_timeout=60,
        iopub_timeout=2,
        on_cell_executed=run.record,
    )
    # the kernel's stderr goes to a file the supervisor reads if the kernel dies (never to our stdout)
    stderr = open(Path(spec.workdir) / "kernel-stderr.log", "wb")  # noqa: SIM115 - closed below
    try:
        async with client.async_setup_kernel(env=env, cwd=spec.workdir, stdout=subprocess.DEVNULL, stderr=stderr):
            await _run_cells(client, notebook, export_cell, limits, cgroup, run, manager)
    finally:
        stderr.close()
    if run.died:
        run.kernel_stderr = _tail(Path(spec.workdir) / "kernel-stderr.log")
    return run


def _tail(path: Path, size: int = 1500) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


async def _run_cells(
    client: Any, notebook: Any, export_cell: Any, limits: Limits, cgroup: Cgroup | None, run: _Run, manager: Any
) -> None:
    """Each code cell within the notebook's time budget, then the export cell; note what is left running."""
    from nbclient.exceptions import DeadKernelError

    deadline = time.monotonic() + limits.notebook_timeout
    run.kernel_pid = manager.provisioner.process.pid if manager.provisioner else None
    student_cells = len(notebook.cells)
    notebook.cells.append(export_cell)
    for index, cell in enumerate(notebook.cells[:student_cells]):
        if cell.cell_type != "code":
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            run.notebook_timeout = True
            break
        client.timeout = max(1, int(min(limits.cell_timeout, remaining)))
        try:
            await asyncio.wait_for(client.async_execute_cell(cell, index), remaining + 5)
        except DeadKernelError:
            run.died = True
            break
        except TimeoutError:
            run.notebook_timeout = True
            break
    if not run.died:
        client.timeout = 20
        try:
            await asyncio.wait_for(client.async_execute_cell(export_cell, student_cells), 25)
            run.exported = True
        except DeadKernelError:
            run.died = True
        except TimeoutError:
            run.notebook_timeout = True
    # what the notebook leaves running (a VM, a fork bomb's children) is counted, then killed
    others = survivors(cgroup, exclude={run.kernel_pid} if run.kernel_pid else set())
    run.leftovers = [{"pid": p.pid, "command": p.command} for p in others]
    notebook.cells.pop()
    run.export_errors = [f"{e['ename']}: {e['evalue']}" for e in run.errors if e["cell"] >= student_cells]
    run.errors = [e for e in run.errors if e["cell"] < student_cells]
    run.exported = run.exported and not run.export_errors


# --- step 4: checks -----------------------------------------------------------------------------


def _lab_namespace(bundle: Mapping[str, Any], student: str) -> tuple[dict[str, Any], list[Any]]:
    """Run the bundle's ``params`` cell, then its check cells, in one namespace as in the notebook.

    :returns: the per-student parameters and the checks.
    """
    os.environ["VLAB_STUDENT_ID"] = student  # what the kernel had: setup() resolves the same student here
    namespace = check_namespace()
    namespace["STUDENT_ID"] = student
    source = bundle.get("params_source")
    params: dict[str, Any] = {}
    if source:
        exec(compile(source, f"<lab {bundle['lab']} params>", "exec"), namespace)
        if callable(namespace.get("params_for")):
            seed = seed_for(student, str(bundle["lab"]), str(bundle.get("course", DEFAULT_COURSE)))
            params = dict(namespace["params_for"](seed))
        else:
            params = dict(namespace.get("PARAMS", {}))
    checks = []
    for entry in bundle.get("check_sources", []):
        with Registry(hidden=bool(entry["hidden"])) as registry:
            exec(compile(entry["source"], f"<lab {bundle['lab']} checks {entry['cell']}>", "exec"), namespace)
        checks.extend(registry.checks)
    return params, checks


def _run_checks(
    job: Job, exports: dict[str, Any], spec: JailSpec, env: dict[str, str], limits: Limits, exports_path: Path
) -> list[CheckResult]:
    params, checks = _lab_namespace(job.bundle, job.student)
    host = None
    if exports["functions"]:
        command = spec.command([sys.executable, "-m", "vlab.grading.exports", "HOST", str(exports_path)])
        host = StudentHost(command, limits.call_timeout, env, Path(spec.workdir))
    try:
        return run_checks(checks, GradedExports(exports, host), params)
    finally:
        if host is not None:
            host.close()


# --- the supervisor -----------------------------------------------------------------------------


def _throwaway_uid() -> int:
    return 1_900_000_000 + os.getpid() % 100_000_000


def _student_env(workdir: Path, job: Job) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "IPYTHONDIR": str(workdir / ".ipython"),
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        "VLAB_GRADING": "1",
        "VLAB_STUDENT_ID": job.student,
    }
    env["VLAB_IMAGES"] = str(images_dir())  # the grader's cache, not one under the fresh HOME
    for name in ("PYTHONPATH", "VLAB_RUNTIME"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def _score(result: dict[str, Any], checks: list[CheckResult], tampered: list[dict[str, Any]]) -> None:
    result["checks"] = [c.as_dict() for c in checks]
    zeroed = {t["question"] for t in tampered}
    for qid, entry in result["questions"].items():
        entry["score"] = float(sum(c.score for c in checks if c.question == qid))
        entry["tampered"] = qid in zeroed or None in zeroed
        if entry["tampered"]:
            entry["score"] = 0.0
    result["total"] = float(sum(e["score"] for e in result["questions"].values()))
    if checks and all(_unanswered(qid, checks) for qid in result["questions"]):
        _flag(result, "unanswered")  # a blank submission: no question was even attempted


def _unanswered(question: str, checks: list[CheckResult]) -> bool:
    """No check of ``question`` passed and one found the student's stub still raising NotImplementedError."""
    mine = [c for c in checks if c.question == question]
    return not any(c.passed for c in mine) and any(c.unanswered for c in mine)


def _hideable(paths: tuple[str, ...], needed: tuple[str, ...]) -> tuple[str, ...]:
    """The paths to hide, but none that holds something the student's process needs (Python, its workdir)."""
    return tuple(h for h in paths if not any(Path(n).is_relative_to(os.path.realpath(h)) for n in needed))


def _jail_spec(job: Job, limits: Limits, workdir: Path, uid: int | None, cgroup: Cgroup | None) -> JailSpec:
    root = os.geteuid() == 0
    reveal = python_paths() if uid is not None else ()
    return JailSpec(
        uid=uid,
        address_space_mb=limits.address_space_mb,
        cpu_seconds=int(limits.notebook_timeout * 2 + 10),
        file_mb=limits.file_mb,
        processes=limits.processes,
        cgroup_procs=cgroup.procs_files if cgroup else (),
        new_netns=root,
        chown=(str(workdir / "kernel.json"),) if uid is not None else (),
        workdir=str(workdir),
        hide=_hideable(tuple(job.hide), (*reveal, os.path.realpath(workdir))) if uid is not None else (),
        reveal=reveal,
    )


def _runnable(raw: dict[str, Any], exports: list[str], exports_path: Path) -> tuple[Any, Any]:
    """The submission as an nbformat node without outputs, forced onto our kernel, and the export cell."""
    import nbformat

    for cell in raw["cells"]:
        cell["source"] = cell_source(cell)  # nbformat allows a list of lines; nbclient wants a str
        cell.pop("outputs", None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    raw["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    notebook = nbformat.from_dict(raw)  # type: ignore[no-untyped-call]
    export_cell = nbformat.v4.new_code_cell(export_cell_source(exports, exports_path))  # type: ignore[no-untyped-call]
    return notebook, export_cell


def _record_run(result: dict[str, Any], run: _Run, cgroup: Cgroup | None) -> None:
    result["leftovers"] = run.leftovers
    result["cell_errors"] = run.errors
    _classify(result, run, run.errors, cgroup)
    if run.kernel_stderr.strip():
        result["notes"].append("the kernel died; the end of its stderr:\n" + run.kernel_stderr.strip())
    if not run.exported:
        why = f" ({'; '.join(run.export_errors)})" if run.export_errors else ""
        result["notes"].append(f"the notebook's names could not be exported{why}: every question scores 0")


def _supervise(job: Job) -> dict[str, Any]:
    started = time.monotonic()
    result = empty_result(job)
    limits = Limits.from_bundle(job.bundle.get("limits", {}))
    raw = _read_submission(job)
    if raw is None:
        _flag(result, "invalid")
        result["notes"].append("the submission is not a readable Jupyter notebook")
        return result
    tampered = _tampered(raw, job.bundle.get("readonly", []))
    result["tampered_cells"] = tampered
    if tampered:
        _flag(result, "tampered")

    become_subreaper()
    root = os.geteuid() == 0
    uid = _throwaway_uid() if root and job.throwaway_uid else None
    workdir = Path(tempfile.mkdtemp(prefix="vlab-grade-"))
    name = f"vlab-grade-{os.getpid()}"
    cgroup = (
        Cgroup.create(name, memory_mb=limits.memory_mb, processes=limits.processes, cpu_percent=limits.cpu_percent)
        if root
        else None
    )
    try:
        (workdir / "tmp").mkdir()
        if uid is not None:
            for path in (workdir, workdir / "tmp"):
                os.chown(path, uid, uid)
        spec = _jail_spec(job, limits, workdir, uid, cgroup)
        env = _student_env(workdir, job)
        exports_path = workdir / EXPORTS_FILE
        notebook, export_cell = _runnable(raw, job.bundle.get("exports", []), exports_path)
        run = asyncio.run(_execute(notebook, export_cell, spec, env, limits, cgroup))
        sweep(cgroup)
        _record_run(result, run, cgroup)
        exports = load_exports(exports_path)
        result["export_problems"] = {
            **{name: "not defined" for name in exports["missing"]},
            **exports["unexportable"],
            **({"*": exports["error"]} if "error" in exports else {}),
        }
        _score(result, _run_checks(job, exports, spec, env, limits, exports_path), tampered)
    finally:
        sweep(cgroup)
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)
        if uid is not None:
            remove_files_of(uid)
        result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _classify(result: dict[str, Any], run: _Run, errors: list[dict[str, Any]], cgroup: Cgroup | None) -> None:
    names = {e["ename"] for e in errors}
    if run.notebook_timeout or "CellTimeout" in names:
        _flag(result, "timeout")
    oom = cgroup.counter("memory", "memory.oom_control", "oom_kill") if cgroup else 0
    if "MemoryError" in names or oom:
        _flag(result, "memory")
    if "BlockingIOError" in names or (cgroup and cgroup.counter("pids", "pids.events", "max")):
        _flag(result, "processes")
    if run.died:
        _flag(result, "kernel-died")
    if names - _QUIET_ERRORS:
        _flag(result, "errors")
    if "NotImplementedError" in names:
        _flag(result, "unanswered")
    if run.leftovers:
        _flag(result, "leftovers")


def _grader_error(job: Job, message: str) -> dict[str, Any]:
    result = empty_result(job)
    result["flags"] = ["grader-error"]
    result["status"] = status_of(result["flags"])
    result["notes"].append(message[-2000:])
    return result


def grade_submission(job: Job) -> dict[str, Any]:
    """Grade one submission in a fresh supervisor process; never raises for a bad submission."""
    limits = Limits.from_bundle(job.bundle.get("limits", {}))
    budget = limits.notebook_timeout + 60 + 10 * limits.call_timeout
    with tempfile.TemporaryDirectory(prefix="vlab-result-") as tmp:
        result_file = Path(tmp) / "result.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlab.grading.sandbox", str(result_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(json.dumps(asdict(job)), timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            group = Cgroup.existing(f"vlab-grade-{proc.pid}")
            sweep(group)  # the kernel dies with its supervisor; its children may not
            if group is not None:
                group.remove()
            return _grader_error(job, f"the grader gave up after {budget:g} s")
        try:
            result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return _grader_error(job, f"the supervisor failed (exit {proc.returncode}): {stderr.strip()}")
    return result


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vlab.grading.sandbox RESULT_FILE  (the job as JSON on stdin)", file=sys.stderr)
        return 2
    # jsonschema (via nbformat) imports this optional IRI checker, which takes ~3.7 s to build its
    # grammar; nbformat never needs it, so the supervisor starts without it
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    job = Job(**json.loads(sys.stdin.read()))
    result = _supervise(job)
    result["status"] = status_of(result["flags"])
    tmp = Path(argv[0] + ".part")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
