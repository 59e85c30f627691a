"""The two jailed processes that run what the checks call, and the checks' view of them (``sub``).

A check runs in the grader. What it calls by name goes to the **helper host**, which runs the locked
cells' helpers (``drive``, ``trial``, ...: the instructor's, verified against the bundle); a student
function goes on from there to the **student host**, which re-created the student's functions from
their source and runs them::

    grader (checks)  --stdin/stdout, JSON lines-->  helper host  --socket, remote.Peer-->  student host
                                                    (trusted: no student code)          (student code)

Both are started by one jail (:attr:`~vlab.grading.jail.JailSpec.inner`): the student host in a pid
namespace nested in the helper host's, so it can neither see nor signal the helper host, while the
helper host sees the student's processes (lab 08's ``Observer`` watches them). The helper host also
makes itself undumpable. A helper passes the student's function the objects it works on (an exit, a
console) as references that obey :data:`~vlab.grading.remote.FOR_STUDENT`; whatever the student
function does -- patch a module, walk the stack, replace a helper -- it does in its own process. So
what a helper returns is what the instructor's code computed, and only JSON reaches the grader.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import ctypes
import importlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

from vlab.grading.checks import StudentCodeError, fail
from vlab.grading.exports import Exported, decode, encode
from vlab.grading.jail import PEER_FD
from vlab.grading.mounts import libc_call
from vlab.grading.remote import FOR_STUDENT, OPEN, Peer, PeerGone, RemoteError

__all__ = ["GradedExports", "Hosts", "defined_helpers", "definitions"]

_MAX_REPLY_BYTES = 32 * 2**20
_PR_SET_DUMPABLE = 4


def definitions(source: str) -> str:
    """The top-level imports, functions, classes and literal constants of a locked cell (nothing it *does*:
    a cell that boots a VM or draws a chart only defines its helpers when the grader runs it)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    kept: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            kept.append(node)
        elif isinstance(node, ast.Assign):
            with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                ast.literal_eval(node.value)
                kept.append(node)
    return ast.unparse(ast.Module(body=kept, type_ignores=[]))


def defined_helpers(sources: Sequence[str]) -> set[str]:
    """Functions and classes the locked cells define: checks call the instructor's, never the kernel's."""
    names: set[str] = set()
    for source in sources:
        with contextlib.suppress(SyntaxError):
            for node in ast.parse(definitions(source)).body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
    return names


# --- the student host ------------------------------------------------------------------------------


def _student_namespace(exports: Exported) -> dict[str, Any]:  # a Python namespace: any value
    """The student's functions re-created from source in a fresh namespace of their own."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, module in exports.modules.items():
        with contextlib.suppress(Exception):  # a module the grader lacks: calls using it fail
            namespace[name] = importlib.import_module(module)
    for name, (module, qualname) in exports.imports.items():
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            namespace[name] = obj
        except Exception:
            pass
    for name, value in exports.values.items():
        namespace[name] = decode(value)
    for name, source in exports.functions.items():
        try:
            exec(compile(source, f"<notebook function {name}>", "exec"), namespace)
        except Exception as exc:
            namespace[name] = _broken(name, exc)
    return namespace


def _broken(name: str, exc: Exception) -> Callable[..., Any]:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} could not be re-created from its source: {type(exc).__name__}: {exc}")

    return broken


def _student_main() -> int:
    """Re-create the student's functions from what the helper host sends first, then serve its calls."""
    from vlab.toyvmm.machine import BOOT_REFUSAL

    peer = Peer(socket.socket(fileno=PEER_FD), OPEN, carried=[BOOT_REFUSAL])
    try:
        exports = Exported.from_json(peer.receive_setup())
    except PeerGone:
        return 1
    peer.serve(_student_namespace(exports))
    return 0


# --- the helper host ------------------------------------------------------------------------------


def _importable_for_helpers(module: str) -> bool:
    top = module.partition(".")[0]
    return top == "vlab" or top in sys.stdlib_module_names


def _helper_namespace(exports: Exported, helpers: Sequence[str], peer: Peer) -> dict[str, Any]:
    """The locked cells' definitions; the student's values and, as calls to the student host, functions and
    imported callables fill in only the names those leave undefined (never a helper's module, constant or
    function)."""
    import vlab
    import vlab.grading

    namespace: dict[str, Any] = {"__name__": "vlab_helpers", "vlab": vlab, "__builtins__": builtins}
    for n, source in enumerate(helpers):
        with contextlib.suppress(Exception):  # a helper that cannot be defined here fails when called
            exec(compile(definitions(source), f"<locked cell {n}>", "exec"), namespace)
    for name, module in exports.modules.items():
        if name not in namespace and _importable_for_helpers(module):
            with contextlib.suppress(Exception):
                namespace[name] = importlib.import_module(module)
    for name, value in exports.values.items():
        namespace.setdefault(name, decode(value))
    for name in (*exports.functions, *exports.imports):  # an answer may be an imported callable: the student's too
        namespace.setdefault(name, peer.function(name))
    return namespace


def _helper_main() -> int:
    """Serve the grader: a first line with the setup, then one JSON request per line on stdin, one JSON
    reply per line on stdout. Ends when the student host is gone (the grader starts both again)."""
    with contextlib.suppress(OSError):  # no process of the student's uid may trace or read this one
        libc_call("prctl", _PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # what a helper starts (a VM, a shell) neither reads the requests
    os.dup2(2, 1)     # nor writes into the replies
    os.close(null)
    setup = json.loads(requests.readline() or "{}")
    exports = Exported.from_json(setup.get("exports"))
    from vlab.toyvmm.machine import BOOT_REFUSAL  # a model the helpers call must not boot a guest to measure

    peer = Peer(socket.socket(fileno=PEER_FD), FOR_STUDENT, carried=[BOOT_REFUSAL])
    peer.send_setup(exports.to_json())
    namespace = _helper_namespace(exports, setup.get("helpers", []), peer)
    for line in requests:
        reply = _perform(namespace, json.loads(line))
        peer.release_all()
        if peer.gone is not None:  # even if the helper caught it: what it computed without the student is void
            reply = {"error": f"the student's process cannot go on: {peer.gone}", "ended": True}
        replies.write(json.dumps(reply, allow_nan=True) + "\n")
        replies.flush()
        if peer.gone is not None:
            return 1
    return 0


def _perform(namespace: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    """One request of the grader's, as the JSON reply (the host protocol's)."""
    try:
        function = namespace.get(request["name"])
        if not callable(function):
            raise NameError(f"{request['name']!r} is neither a helper nor a student function")
        return {"ok": encode(function(*decode(request["args"]), **decode(request["kwargs"])))}  # JSON, no references
    except TypeError as exc:
        return {"error": f"TypeError: {exc}"}
    except NotImplementedError:
        return {"error": "NotImplementedError", "unanswered": True}
    except RemoteError as exc:  # the student host's exception: its own type's name is in it
        return {"error": str(exc)}
    except BaseException as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


# --- the grader's side ------------------------------------------------------------------------------


class Hosts:
    """The helper host and the student host of one submission, started (again) on demand.

    :param command: argv that starts the helper host in a jail whose ``inner`` command is the student host
        (``python -I -m vlab.grading.hosts HELPERS`` and ``... STUDENT``).
    :param call_timeout: seconds a single call may take before both processes are killed.
    :param helpers: the verified sources of the locked code cells
        (:func:`~vlab.grading.integrity.verified_sources`).
    :param exports: what the student's kernel exported, locked cells' values pinned
        (:func:`~vlab.grading.exports.with_pins`).
    """

    def __init__(
        self,
        command: Sequence[str],
        call_timeout: float,
        env: Mapping[str, str],
        helpers: Sequence[str] = (),
        exports: Exported | None = None,
    ) -> None:
        self._command = list(command)
        self._timeout = call_timeout
        self._env = dict(env)
        self._setup = json.dumps({"helpers": list(helpers), "exports": (exports or Exported()).to_json()})
        self._proc: subprocess.Popen[str] | None = None
        self.calls = 0

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._proc = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=self._env,
                cwd="/",  # the jail changes to the working directory once it has dropped its rights
                start_new_session=True,
            )
            assert self._proc.stdin is not None
            with contextlib.suppress(OSError):
                self._proc.stdin.write(self._setup + "\n")
        return self._proc

    def call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Call ``name(*args, **kwargs)`` (a helper, or a student function) and return its (decoded) result.

        :raises StudentCodeError: if it raised, did not return in time, or killed its process.
        :raises NotImplementedError: if a student function it called is still the stub.
        """
        from vlab.qemu.fields import shown as cut  # here: the hosts themselves need not import vlab.qemu

        shown = f"{name}({', '.join(repr(cut(a)) for a in args)})"
        try:
            payload = json.dumps({"name": name, "args": encode(list(args)), "kwargs": encode(dict(kwargs))})
        except TypeError as exc:
            raise StudentCodeError(f"cannot pass the arguments of {shown} to the student process: {exc}") from exc
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        self.calls += 1
        try:
            proc.stdin.write(payload + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            raise StudentCodeError(f"{shown} could not run: the student process exited") from None
        line = self._read_line(proc.stdout)
        if line is None:
            self.close()
            raise StudentCodeError(f"{shown} did not return within {self._timeout:g} s (or crashed its process)")
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            self.close()  # the rest of an oversized reply would still be in the pipe
            raise StudentCodeError(f"{shown} returned something the grader cannot read (too large?)")
        if reply.get("ended"):
            self.close()  # the helper host exits after this reply: the next call starts both again
        if reply.get("unanswered"):
            raise NotImplementedError(name)
        if "error" in reply:
            raise StudentCodeError(f"{shown} raised {reply['error']}")
        return decode(reply["ok"])

    def _read_line(self, stream: IO[str]) -> str | None:
        deadline = time.monotonic() + self._timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([stream], [], [], remaining)
            if ready:
                line = stream.readline(_MAX_REPLY_BYTES)  # a huge return value is not read whole
                return line or None

    def close(self) -> None:
        """Kill both processes (the jail's namespaces end with its first process; nothing is worth a graceful exit)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):  # a request still buffered for a process that is gone
                        stream.close()
            self._proc = None


class GradedExports:
    """What checks see as ``sub`` at grading time: exported values, and calls into the hosts.

    A name a locked cell defines (a helper such as ``drive``) always calls the instructor's definition in
    the helper host, whatever the kernel exported under that name.
    """

    def __init__(self, exports: Exported, hosts: Hosts | None, helpers: Iterable[str] = ()) -> None:
        self._exports = exports
        self._hosts = hosts
        self._helpers = frozenset(helpers)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        exports = self._exports
        if (name in self._helpers or name in exports.functions) and self._hosts is not None:
            hosts = self._hosts
            return lambda *args, **kwargs: hosts.call(name, args, kwargs)
        if name in exports.values and name not in self._helpers:
            return decode(exports.values[name])
        if name in exports.unexportable:
            fail(f"'{name}' could not be exported from the notebook: {exports.unexportable[name]}")
        fail(f"'{name}' is not defined: run the cell that defines it, and keep its name")

    def __contains__(self, name: str) -> bool:
        return name in self._exports.values or name in self._exports.functions or name in self._helpers


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) == 2 else ""
    if role not in ("HELPERS", "STUDENT"):
        print("usage: python -I -m vlab.grading.hosts HELPERS|STUDENT (inside a jail, fd 3 the peer)", file=sys.stderr)
        sys.exit(2)
    sys.exit(_helper_main() if role == "HELPERS" else _student_main())
