"""Grade one submission, in its own process.

:func:`grade_submission` is what a worker (local or Dask) runs for one :class:`Job`: it starts a
*supervisor* (``python -I -m vlab.grading.sandbox RESULT_FILE`` from ``/`` with a clean
environment, the job on stdin) and returns its result, or a ``grader-error`` result if the
supervisor itself failed -- one broken submission never stops a batch. The supervisor:

1. parses the submission (``invalid`` if it is not a well-formed notebook) and compares its
   locked cells with the bundle (``tampered``, :mod:`vlab.grading.integrity`);
2. makes a private directory (``work/`` for the student, ``conn/`` for the kernel's sockets) and
   runs the notebook with nbclient in a kernel started through :mod:`vlab.grading.jail` (an
   allow-list root, new namespaces, a throw-away uid or a user namespace, a cgroup); the
   outputs are counted, never kept; a last injected cell exports the lab's names;
3. notes what the notebook left running in its pid namespace and cgroup and kills it;
4. runs the bundle's checks *here*, on the exports, with student functions and the locked
   cells' helpers called in the jailed :class:`~vlab.grading.hosts.Hosts`;
5. removes the cgroup and the directory, and writes the result (:class:`~vlab.grading.results.SubmissionResult`
   as JSON: the only form in which it leaves the supervisor).

The supervisor never opens, follows or executes anything in ``work/`` by path: the exports are read
through a directory descriptor with ``O_NOFOLLOW``, and the sockets' directory becomes root's once the
kernel is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.grading import seeds
from vlab.grading.assign import check_namespace
from vlab.grading.bundle import Bundle, Limits
from vlab.grading.checks import Check, CheckResult, Registry, run_checks
from vlab.grading.exports import (
    EXPORTS_FILE,
    PINNED_FILE,
    Exported,
    export_cell_source,
    load_exports,
    with_pins,
)
from vlab.grading.format import Cell, Notebook
from vlab.grading.hosts import GradedExports, Hosts, defined_helpers
from vlab.grading.integrity import (
    MAX_NOTEBOOK_BYTES,
    find_tampering,
    parse_submission,
    pinned_exports,
    verified_sources,
)
from vlab.grading.jail import (
    Cgroup,
    JailSpec,
    become_subreaper,
    inner_pid,
    namespace_members,
    sweep,
    userns_available,
)
from vlab.grading.mounts import share_with_students, student_readonly
from vlab.grading.results import CellError, Leftover, QuestionScore, SubmissionResult
from vlab.paths import images_dir
from vlab.qemu.template import TEMPLATES_ENV, templates_dir

__all__ = ["MAX_MESSAGE_BYTES", "THROWAWAY_UIDS", "Job", "empty_result", "grade_submission", "isolation_mode"]

_QUIET_ERRORS = {"NotImplementedError", "CellTimeout", "KeyboardInterrupt", "MemoryError", "BlockingIOError"}
#: The largest kernel message the supervisor accepts (a bigger one is dropped by ZeroMQ, unread).
MAX_MESSAGE_BYTES = 8 * 2**20
#: Kernel messages the supervisor lets wait to be counted; more are dropped (a flood: its cell times out).
MAX_QUEUED_MESSAGES = 12
#: The uids a submission runs as when graded as root: one per supervisor process, owned by no account.
THROWAWAY_UIDS = range(1_900_000_000, 2_000_000_000)


@dataclass(frozen=True)
class Job:
    """One submission to grade.

    :param submission: path of the notebook (also how results name it).
    :param student: the student id (its owner: the parameters are computed for this id).
    :param bundle: the lab's autograder bundle.
    :param isolation: ``auto`` (root's namespaces and throw-away uid, else a user namespace; refused where
        neither is possible) or ``none`` (``vlab grade --no-isolation``: rlimits only).
    :param notebook: the notebook's text, if the worker cannot read ``submission`` (Dask).
    """

    submission: str
    student: str
    bundle: Bundle
    isolation: str = "auto"
    notebook: str | None = None

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "bundle": self.bundle.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        return cls(**{**data, "bundle": Bundle.from_dict(data["bundle"])})


def isolation_mode(requested: str = "auto") -> str:
    """The jail mode for ``requested`` on this host: ``root``, ``userns`` or ``none``.

    :raises VlabError: if isolation is wanted but neither root nor unprivileged user namespaces are available.
    """
    if requested == "none":
        return "none"
    if requested != "auto":
        raise VlabError("unknown isolation", field="isolation", value=requested, fix="use 'auto' or 'none'")
    if os.geteuid() == 0:
        return "root"
    if userns_available():
        return "userns"
    raise VlabError(
        "cannot isolate student code here: not root, and unprivileged user namespaces are disabled",
        field="vlab grade",
        fix="run as root, enable user namespaces (sysctl kernel.unprivileged_userns_clone=1), or pass "
        "--no-isolation to run student code with your own rights (recorded in the gradebook)",
    )


def empty_result(job: Job) -> SubmissionResult:
    """The result of a submission before anything ran: every question 0."""
    questions = {q: QuestionScore(0.0, info.points) for q, info in job.bundle.questions.items()}
    return SubmissionResult(
        student=job.student,
        lab=job.bundle.lab,
        submission=job.submission,
        questions=questions,
        max=job.bundle.max_points,
        isolation=job.isolation,
    )


def _student_seed(student: str, bundle: Bundle) -> int:
    """The student's seed, as the kernel computes it (no secret: what is hidden are the checks)."""
    return seeds.seed_for(student, bundle.lab, bundle.course)


# --- step 2 and 3: execute ----------------------------------------------------------------------


@dataclass
class _Run:
    died: bool = False
    notebook_timeout: bool = False
    jail_pid: int | None = None
    leftovers: list[Leftover] = field(default_factory=list)
    exported: bool = False
    export_timeout: bool = False
    errors: list[CellError] = field(default_factory=list)
    kernel_stderr: str = ""
    export_errors: list[str] = field(default_factory=list)
    output_bytes: int = 0
    #: name → the pin export taken right after the verified locked cell that exports it
    pins: dict[str, Exported] = field(default_factory=dict)

    def record(self, cell: Any, cell_index: int, execute_reply: dict[str, Any] | None) -> None:
        """nbclient's ``on_cell_executed`` hook: keep each failing cell's error from its reply (a Jupyter
        message: the kernel's JSON, untrusted, read key by key)."""
        content = (execute_reply or {}).get("content", {})
        if isinstance(content, dict) and content.get("status") == "error":
            ename, evalue = str(content.get("ename"))[:100], str(content.get("evalue"))[:300]
            self.errors.append(CellError(cell_index, ename, evalue))


def _client_class() -> Any:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionComplete

    class CountingClient(NotebookClient):
        """Keeps no output at all: the supervisor's memory must not grow with what the student prints."""

        run: _Run

        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> None:  # Jupyter message JSON
            content = msg.get("content") or {}
            if msg.get("msg_type") == "status":
                if content.get("execution_state") == "idle":
                    raise CellExecutionComplete()
                return
            self.run.output_bytes += sum(len(str(v)) for v in content.values()) if isinstance(content, dict) else 0

    return CountingClient


def _kernel_manager(spec: JailSpec, conn: Path) -> Any:
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    class JailedKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return spec.command(super().format_kernel_cmd(extra_arguments))

        def client(self, **kwargs: Any) -> Any:
            client = super().client(**kwargs)
            client.context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # a bigger message is dropped unread
            # and at most this many wait to be counted: a kernel that prints faster than a loaded supervisor
            # counts would otherwise queue its messages in the supervisor's memory (ZMQ's default is 1000)
            client.context.setsockopt(zmq.RCVHWM, MAX_QUEUED_MESSAGES)
            return client

    manager = JailedKernelManager(kernel_name="python3", transport="ipc", ip=str(conn / "k"))
    manager.connection_file = str(conn / "kernel.json")
    manager.write_connection_file()
    os.chmod(manager.connection_file, 0o644)  # the kernel's uid reads it; conn/ is its own, 0700, untouched yet
    return manager


@dataclass(frozen=True)
class _Pins:
    """Where the grader takes a locked cell's exports as soon as it has run (see ``pinned_exports``)."""

    after: Mapping[int, tuple[str, ...]]  # cell index → names
    work_fd: int  # the student's directory, read without following a symlink
    path: Path  # PINNED_FILE inside it, as the kernel sees it

    def cell(self, names: tuple[str, ...]) -> Any:
        import nbformat

        return nbformat.v4.new_code_cell(export_cell_source(names, self.path))  # type: ignore[no-untyped-call]

    def take(self) -> Exported:
        """Read the pin file at once (before any student code runs again) and remove it."""
        taken = load_exports(Path(PINNED_FILE), dir_fd=self.work_fd)
        with contextlib.suppress(OSError):
            os.unlink(PINNED_FILE, dir_fd=self.work_fd)
        return taken


async def _execute(
    notebook: Any,
    export_cell: Any,
    pins: _Pins,
    spec: JailSpec,
    env: dict[str, str],
    limits: Limits,
    cgroup: Cgroup | None,
    fds: tuple[int, int],
) -> _Run:
    conn_fd, stderr_fd = fds
    run = _Run()
    manager = _kernel_manager(spec, Path(spec.writable[0]))
    client = _client_class()(
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
    client.run = run
    try:
        async with client.async_setup_kernel(env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=stderr_fd):
            if spec.mode == "root":  # the sockets are bound: from now on the student cannot swap them
                os.fchown(conn_fd, 0, 0)
                os.fchmod(conn_fd, 0o711)
            await _run_cells(client, notebook, export_cell, pins, limits, cgroup, run, manager)
    except RuntimeError as exc:  # the kernel did not come up: no student code ran
        raise VlabError("the jailed kernel did not start", detail=f"{exc}; its stderr: {_tail(stderr_fd)}") from exc
    return run


async def _run_cells(
    client: Any,
    notebook: Any,
    export_cell: Any,
    pins: _Pins,
    limits: Limits,
    cgroup: Cgroup | None,
    run: _Run,
    manager: Any,
) -> None:
    """Each code cell within the notebook's time budget (after each verified locked cell that exports names, a
    pin cell whose export is read at once), then the export cell; note what is left running."""
    from nbclient.exceptions import DeadKernelError

    deadline = time.monotonic() + limits.notebook_timeout
    run.jail_pid = manager.provisioner.process.pid if manager.provisioner else None
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
            if index in pins.after:
                names = pins.after[index]
                await asyncio.wait_for(client.async_execute_cell(pins.cell(names), index), _export_timeout(limits))
                taken = pins.take()
                run.pins.update(dict.fromkeys(names, taken))
        except DeadKernelError:
            run.died = True
            break
        except TimeoutError:
            run.notebook_timeout = True
            break
    if not run.died and not run.notebook_timeout:
        client.timeout = int(_export_timeout(limits))
        try:
            await asyncio.wait_for(client.async_execute_cell(export_cell, student_cells), client.timeout + 5)
            run.exported = True
        except DeadKernelError:
            run.died = True
        except TimeoutError:
            run.export_timeout = True
    run.leftovers = _leftovers(run.jail_pid, cgroup)
    notebook.cells.pop()
    run.export_errors = [f"{e.ename}: {e.evalue}" for e in run.errors if e.cell >= student_cells]
    run.errors = [e for e in run.errors if e.cell < student_cells]
    run.exported = run.exported and not run.export_errors


def _export_timeout(limits: Limits) -> float:
    """Seconds the export cell may take: like any cell, but at least 5 s."""
    return max(5.0, limits.cell_timeout)


def _leftovers(jail_pid: int | None, cgroup: Cgroup | None) -> list[Leftover]:
    """What the notebook leaves running besides its kernel (a VM, a fork bomb's children), by membership."""
    if jail_pid is None:
        return []
    members = namespace_members(jail_pid) | (cgroup.members() if cgroup else set())
    found = []
    for pid in sorted(members - {jail_pid, os.getpid()}):
        if inner_pid(pid) in (1, 2):  # the jail's init and the kernel itself
            continue
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not command.strip():  # a zombie leader whose other threads run on has no command line
                command = "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
            found.append(Leftover(pid, command.strip()[:300]))
    return found


# --- step 4: checks -----------------------------------------------------------------------------


def _lab_namespace(bundle: Bundle, student: str) -> tuple[dict[str, Any], list[Check]]:  # params: any values
    """Run the bundle's ``params`` cell, then its check cells, in one namespace as in the notebook.

    :returns: the owner's parameters (from the instructor's code, never from the submission) and the checks.
    """
    namespace = check_namespace()
    namespace["STUDENT_ID"] = student
    params: dict[str, Any] = {}  # the instructor's parameters: any values their params_for returns
    if bundle.params_source:
        exec(compile(bundle.params_source, f"<lab {bundle.lab} params>", "exec"), namespace)
        if callable(namespace.get("params_for")):
            params = dict(namespace["params_for"](_student_seed(student, bundle)))
        else:
            params = dict(namespace.get("PARAMS", {}))
    checks = []
    for entry in bundle.check_sources:
        with Registry(hidden=entry.hidden) as registry:
            exec(compile(entry.source, f"<lab {bundle.lab} checks {entry.cell}>", "exec"), namespace)
        checks.extend(registry.checks)
    return params, checks


def _run_checks(
    job: Job, exports: Exported, spec: JailSpec, env: dict[str, str], helpers: list[str]
) -> list[CheckResult]:
    params, checks = _lab_namespace(job.bundle, job.student)
    host = [sys.executable, "-I", "-m", "vlab.grading.hosts"]
    command = replace(spec, inner=(*host, "STUDENT")).command([*host, "HELPERS"])
    hosts = Hosts(command, job.bundle.limits.call_timeout, env, helpers, exports)
    try:
        return run_checks(checks, GradedExports(exports, hosts, defined_helpers(helpers)), params)
    finally:
        hosts.close()


# --- the supervisor -----------------------------------------------------------------------------


def _throwaway_uid() -> int:
    return THROWAWAY_UIDS.start + os.getpid() % len(THROWAWAY_UIDS)


def _student_env(work: Path, job: Job, mode: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "HOME": str(work),
        "TMPDIR": "/tmp" if mode != "none" else str(work),
        "IPYTHONDIR": str(work / ".ipython"),
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        "VLAB_GRADING": "1",
        "VLAB_STUDENT_ID": job.student,
        "VLAB_COURSE": job.bundle.course,
        "VLAB_DENY_OUTBOUND": "1",
        "VLAB_IMAGES": str(images_dir()),  # the grader's cache (read-only inside), not one under the fresh HOME
        # the grader's snapshot templates (read-only inside, see vlab.qemu.template): VMs restore, never build
        TEMPLATES_ENV: str(templates_dir()),
    }


def _score(result: SubmissionResult, checks: list[CheckResult]) -> None:
    result.checks = list(checks)
    zeroed = {t.question for t in result.tampered_cells}
    for qid, entry in result.questions.items():
        entry.score = float(sum(c.score for c in checks if c.question == qid))
        entry.tampered = qid in zeroed or None in zeroed
        if entry.tampered:
            entry.score = 0.0
    result.total = float(sum(e.score for e in result.questions.values()))
    if checks and all(_unanswered(qid, checks) for qid in result.questions):
        result.flag("unanswered")  # a blank submission: no question was even attempted
    if any(c.unchecked for c in checks):
        result.flag("unchecked")  # this host could not run some checks: grade again on one that can


def _unanswered(question: str, checks: list[CheckResult]) -> bool:
    """No check of ``question`` passed and one found the student's stub still raising NotImplementedError."""
    mine = [c for c in checks if c.question == question]
    return not any(c.passed for c in mine) and any(c.unanswered for c in mine)


def _runnable(raw: Notebook, exports: tuple[str, ...], exports_path: Path) -> tuple[Any, Any]:
    """The submission's cells (type and source only) as a notebook on our kernel, and the export cell."""
    import nbformat

    cells = []
    for cell in raw["cells"]:
        kept: Cell = {"cell_type": cell["cell_type"], "source": cell["source"], "metadata": {}}
        if cell["cell_type"] == "code":
            kept.update(outputs=[], execution_count=None)
        cells.append(kept)
    clean = {
        "nbformat": 4,
        "nbformat_minor": 4,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": cells,
    }
    notebook = nbformat.from_dict(clean)  # type: ignore[no-untyped-call]
    export_cell = nbformat.v4.new_code_cell(export_cell_source(exports, exports_path))  # type: ignore[no-untyped-call]
    return notebook, export_cell


def _record_run(result: SubmissionResult, run: _Run, cgroup: Cgroup | None) -> None:
    result.leftovers = list(run.leftovers)
    result.cell_errors = list(run.errors)
    result.output_bytes = run.output_bytes
    _classify(result, run, run.errors, cgroup)
    if run.kernel_stderr.strip():
        result.notes.append("the kernel died; the end of its stderr:\n" + run.kernel_stderr.strip())
    if not run.exported:
        why = f" ({'; '.join(run.export_errors)})" if run.export_errors else ""
        if run.export_timeout:
            why = " (the export did not finish in time)"
        result.notes.append(f"the notebook's names could not be exported{why}: every question scores 0")
        if run.export_errors or run.export_timeout:
            result.flag("export-failed")


def _read_text(job: Job) -> str | bytes:
    if job.notebook is not None:
        return job.notebook
    fd = os.open(job.submission, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_NOTEBOOK_BYTES + 1)


def _tail(fd: int, size: int = 1500) -> str:
    with contextlib.suppress(OSError):
        end = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, max(0, end - size), os.SEEK_SET)
        return os.read(fd, size).decode(errors="replace")
    return ""


def _make_private_dirs(uid: int | None) -> tuple[Path, int, int]:
    """``base/`` (ours, 0700) with ``work/`` and ``conn/`` handed to the student uid, ``root/`` (the stage) and
    ``shared/`` (ours, 0755: the checks' files for the student's processes, :func:`shared_dir`).

    :returns: base and open descriptors of ``work/`` and ``conn/``: every later access goes through those.
    """
    base = Path(tempfile.mkdtemp(prefix="vlab-grade-"))
    os.environ["TMPDIR"] = tempfile.tempdir = str(base)  # what libraries make for themselves goes with base
    fds = []
    os.mkdir(base / "shared")
    os.chmod(base / "shared", 0o755)
    for name in ("work", "conn", "root"):
        os.mkdir(base / name, 0o700)
        if name != "root":
            fd = os.open(base / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            if uid is not None:
                os.fchown(fd, uid, uid)
            fds.append(fd)
    return base, fds[0], fds[1]


def _supervise(job: Job) -> SubmissionResult:
    started = time.monotonic()
    result = empty_result(job)
    bundle, limits = job.bundle, job.bundle.limits
    mode = isolation_mode(job.isolation)
    result.isolation = mode
    try:
        raw, why = parse_submission(_read_text(job))
    except OSError as exc:
        raw, why = None, f"the submission cannot be read: {exc.strerror or exc}"
    if raw is None:
        result.flag("invalid")
        result.notes.append(why)
        return result
    result.tampered_cells = find_tampering(raw, bundle)
    if result.tampered_cells:
        result.flag("tampered")
    helpers = verified_sources(raw, bundle)
    uid = _throwaway_uid() if mode == "root" else None
    base, work_fd, conn_fd = _make_private_dirs(uid)
    work = base / "work"
    cgroup = None
    if mode == "root":
        cgroup = Cgroup.create(
            f"vlab-grade-{os.getpid()}",
            memory_mb=limits.memory_mb,
            processes=limits.processes,
            cpu_percent=limits.cpu_percent,
        )
    stderr_fd = os.open(base / "kernel-stderr.log", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        spec = JailSpec(
            mode=mode,
            uid=uid,
            address_space_mb=limits.address_space_mb,
            cpu_seconds=int(limits.notebook_timeout * 2 + 10),
            file_mb=limits.file_mb,
            processes=limits.processes,
            cgroup_procs=cgroup.procs_files if cgroup else (),
            workdir=str(work),
            writable=(str(base / "conn"), str(base / "shared")),  # shared: writable only where a check opens it up
            readonly=student_readonly(),
            stage=str(base / "root"),
        )
        env = _student_env(work, job, mode)
        notebook, export_cell = _runnable(raw, bundle.exports, work / EXPORTS_FILE)
        pins = _Pins(pinned_exports(raw, bundle), work_fd, work / PINNED_FILE)
        run = asyncio.run(_execute(notebook, export_cell, pins, spec, env, limits, cgroup, (conn_fd, stderr_fd)))
        sweep(cgroup, [run.jail_pid] if run.jail_pid else [])
        if mode == "none" and run.jail_pid:  # no namespace to end: at least the kernel's process group
            with contextlib.suppress(OSError):
                os.killpg(run.jail_pid, signal.SIGKILL)
        if run.died:
            run.kernel_stderr = _tail(stderr_fd)
        _record_run(result, run, cgroup)
        exports = with_pins(load_exports(Path(EXPORTS_FILE), dir_fd=work_fd), run.pins)
        result.export_problems = exports.problems
        if exports.unexportable or (run.exported and exports.error is not None):
            result.flag("export-failed")
        share_with_students(base / "shared")
        _score(result, _run_checks(job, exports, spec, env, helpers))
    finally:
        share_with_students(None)
        sweep(cgroup)
        if cgroup is not None:
            cgroup.remove()
        for fd in (work_fd, conn_fd, stderr_fd):
            os.close(fd)
        shutil.rmtree(base, ignore_errors=True)  # fd-based: never follows a symlink the student left
        result.seconds = round(time.monotonic() - started, 3)
    return result


def _classify(result: SubmissionResult, run: _Run, errors: list[CellError], cgroup: Cgroup | None) -> None:
    names = {e.ename for e in errors}
    if run.notebook_timeout or "CellTimeout" in names:
        result.flag("timeout")
    if "MemoryError" in names or (cgroup and cgroup.oom_kills()):  # cgroup v1 or v2 alike
        result.flag("memory")
    if "BlockingIOError" in names or (cgroup and cgroup.pids_refused()):
        result.flag("processes")
    if run.died:
        result.flag("kernel-died")
    if names - _QUIET_ERRORS:
        result.flag("errors")
    if "NotImplementedError" in names:
        result.flag("unanswered")
    if run.leftovers:
        result.flag("leftovers")


def _grader_error(job: Job, message: str) -> SubmissionResult:
    result = empty_result(job)
    result.flag("grader-error")
    result.notes.append(message[-2000:])
    return result


def _supervisor_env() -> dict[str, str]:
    """Nothing of the caller's environment but where the images and temporary files are."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",
        "VLAB_IMAGES": str(images_dir().resolve()),
        TEMPLATES_ENV: str(templates_dir().resolve()),
        "TMPDIR": tempfile.gettempdir(),
    }


def grade_submission(job: Job) -> SubmissionResult:
    """Grade one submission in a fresh supervisor process; never raises for a bad submission."""
    limits = job.bundle.limits
    budget = limits.notebook_timeout + 60 + 10 * limits.call_timeout
    with tempfile.TemporaryDirectory(prefix="vlab-result-") as tmp:
        result_file = Path(tmp) / "result.json"
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "vlab.grading.sandbox", str(result_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            env=_supervisor_env(),
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(job.to_json(), timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            group = Cgroup.existing(f"vlab-grade-{proc.pid}")
            sweep(group)  # the jails die with their supervisor (parent-death signal); the cgroup is swept too
            if group is not None:
                group.remove()
            return _grader_error(job, f"the grader gave up after {budget:g} s")
        try:
            result = SubmissionResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return _grader_error(job, f"the supervisor failed (exit {proc.returncode}): {stderr.strip()[-2000:]}")
    return result


def _peak_mib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -I -m vlab.grading.sandbox RESULT_FILE  (the job as JSON on stdin)", file=sys.stderr)
        return 2
    # jsonschema (via nbformat) imports this optional IRI checker, which takes ~3.7 s to build its
    # grammar; nbformat never needs it, so the supervisor starts without it
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    become_subreaper()  # this process only: what a jail leaves behind comes back here to be swept
    job = Job.from_json(sys.stdin.read())
    try:
        result = _supervise(job)
    except VlabError as exc:
        result = _grader_error(job, str(exc))
    result.supervisor_peak_mib = _peak_mib()
    tmp = Path(argv[0] + ".part")
    tmp.write_text(json.dumps(result.to_dict()), encoding="utf-8")
    os.replace(tmp, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
