"""What leaves the student's kernel, and how checks call the student's functions.

1. **In the kernel**, the grader's last injected cell calls :func:`dump_exports`: each exported
   name becomes JSON — values through :func:`encode` (tuples, sets, bytes and non-string dict
   keys are tagged so they come back as they were), notebook functions as their *source text*,
   together with what they use (other notebook functions, modules, imported callables and
   JSON-able globals, found by parsing the source).
2. **In the grader**, :class:`GradedExports` gives checks attribute access to those values; a
   function becomes a proxy that sends its arguments to a :class:`StudentHost`, a separate
   jailed process that re-creates the functions from source in a fresh namespace and runs them
   (with a timeout per call). A helper that a locked cell defines (e.g. ``drive``) is always the
   instructor's: its source comes from the cell whose checksum matches the bundle, never from the
   kernel. Student code thus never runs in the process that computes the grade: whatever it
   monkeypatches, it patches in its own process.

Only JSON crosses the boundary in either direction; nothing is unpickled.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import inspect
import json
import os
import select
import stat
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from vlab.grading.checks import StudentCodeError, fail

__all__ = [
    "EXPORTS_FILE",
    "PINNED_FILE",
    "Exported",
    "GradedExports",
    "StudentHost",
    "decode",
    "dump_exports",
    "encode",
    "export_cell_source",
    "export_namespace",
    "load_exports",
    "with_pins",
]

#: The file the export cell writes in the submission's working directory.
EXPORTS_FILE = "vlab-exports.json"
#: The file a pin cell (right after a verified locked cell that exports names) writes; read at once.
PINNED_FILE = "vlab-pinned.json"
_MAX_EXPORTS_BYTES = 32 * 2**20


class _Unencodable(TypeError):
    pass


def encode(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-able data; tuples, sets, bytes and non-str dict keys are tagged.

    :raises TypeError: for anything else (files, VM objects, classes, ...).
    """
    if depth > 50:
        raise _Unencodable("nested too deeply")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, depth + 1) for v in value]}
    if isinstance(value, set | frozenset):
        return {"$set": [encode(v, depth + 1) for v in sorted(value, key=repr)]}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, depth + 1) for k, v in value.items()}
        return {"$dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return encode(value.tolist(), depth + 1)
    raise _Unencodable(f"a {type(value).__name__} cannot be exported")


def decode(data: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        ((tag, body),) = data.items()
        if tag == "$tuple":
            return tuple(decode(v) for v in body)
        if tag == "$set":
            return {_hashable(decode(v)) for v in body}
        if tag == "$bytes":
            return base64.b64decode(body)
        if tag == "$dict":
            return {_hashable(decode(k)): decode(v) for k, v in body}
    return {k: decode(v) for k, v in data.items()}


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _code_globals(code: types.CodeType) -> set[str]:
    """Names a code object (and the functions, lambdas and comprehensions nested in it) looks up globally.

    Parameters and local variables are ``co_varnames``, not ``co_names``, so they are never included.
    """
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_globals(const)
    return names


def _used_names(source: str, func: Any = None) -> list[str]:
    """The global names a function's source needs: read as plain names (not attributes), and -- when the
    function object is known -- looked up globally by its code (so a parameter named like a global is not one)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    plain = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    code = getattr(inspect.unwrap(func), "__code__", None) if func is not None else None
    if code is None:
        return sorted(plain)
    decorators = {node.id for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                  for dec in fn.decorator_list for node in ast.walk(dec) if isinstance(node, ast.Name)}
    return sorted(plain & (_code_globals(code) | decorators))


def _function_source(obj: Any) -> str | None:
    target = inspect.unwrap(obj) if callable(obj) else obj
    if not isinstance(target, types.FunctionType) or target.__module__ != "__main__":
        return None
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return None


def _empty_exports() -> dict[str, Any]:  # the JSON the kernel writes (it runs there: no grader types)
    """The shape of an export: what the kernel writes (:class:`Exported` is it read back)."""
    return {"values": {}, "functions": {}, "modules": {}, "imports": {}, "missing": [], "unexportable": {}}


def _strings(data: Any) -> dict[str, str]:
    """The str → str entries of untrusted JSON (nothing if it is not an object)."""
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


@dataclass(frozen=True)
class Exported:
    """What the kernel exported, read back by the grader (:meth:`from_json` checks its shape).

    :param values: name → the value as :func:`encode` wrote it (JSON: decoded, by :func:`decode`, when a check
        reads it).
    :param functions: name → the source of a notebook function (re-created only in the student host).
    :param modules: name → the module imported under that name.
    :param imports: name → (module, qualified name) of an imported callable.
    :param missing: wanted names the notebook did not define.
    :param unexportable: name → why its value could not be exported.
    :param error: why nothing could be read (no file, too large, not JSON), else None.
    """

    values: Mapping[str, Any] = field(default_factory=dict)  # encode()d JSON, untrusted until decode()
    functions: Mapping[str, str] = field(default_factory=dict)
    modules: Mapping[str, str] = field(default_factory=dict)
    imports: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    unexportable: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_json(cls, data: Any, error: str | None = None) -> Exported:
        """The parsed export file (untrusted: the kernel's to write); an entry of the wrong shape is dropped."""
        if not isinstance(data, dict):
            return cls(error=error or "malformed exports")
        values = data.get("values")
        imports = data.get("imports")
        missing = data.get("missing")
        return cls(
            values={k: v for k, v in values.items() if isinstance(k, str)} if isinstance(values, dict) else {},
            functions=_strings(data.get("functions")),
            modules=_strings(data.get("modules")),
            imports={
                k: (v[0], v[1])
                for k, v in (imports.items() if isinstance(imports, dict) else ())
                if isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(isinstance(p, str) for p in v)
            },
            missing=tuple(n for n in missing if isinstance(n, str)) if isinstance(missing, list) else (),
            unexportable=_strings(data.get("unexportable")),
            error=error,
        )

    def to_json(self) -> dict[str, Any]:  # the JSON form (the values are JSON already)
        """The JSON form (what the kernel writes; ``error`` only if set)."""
        data: dict[str, Any] = {
            "values": dict(self.values),
            "functions": dict(self.functions),
            "modules": dict(self.modules),
            "imports": {k: list(v) for k, v in self.imports.items()},
            "missing": list(self.missing),
            "unexportable": dict(self.unexportable),
        }
        return data if self.error is None else {**data, "error": self.error}

    @property
    def problems(self) -> dict[str, str]:
        """Exported name (or ``*`` for the whole export) → why the grader does not have it."""
        found = {name: "not defined" for name in self.missing}
        found.update(self.unexportable)
        if self.error is not None:
            found["*"] = self.error
        return found


def export_namespace(namespace: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:  # runs in the kernel
    """Export ``names`` (and what their functions use) from a notebook namespace, as JSON-able data."""
    out = _empty_exports()
    queue = [(name, True) for name in names]
    seen: set[str] = set()
    while queue:
        name, wanted = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if name not in namespace:
            if wanted:
                out["missing"].append(name)
            continue
        obj = namespace[name]
        source = _function_source(obj)
        if isinstance(obj, types.ModuleType):
            out["modules"][name] = obj.__name__
        elif source is not None:
            out["functions"][name] = source
            queue.extend((used, False) for used in _used_names(source, obj) if used != name)
        elif callable(obj) and getattr(obj, "__module__", None) and getattr(obj, "__qualname__", None):
            out["imports"][name] = [obj.__module__, obj.__qualname__]
        else:
            try:
                out["values"][name] = encode(obj)
            except TypeError as exc:
                if wanted:
                    out["unexportable"][name] = f"{exc} ({type(obj).__name__})"
    return out


def dump_exports(namespace: Mapping[str, Any], names: Sequence[str], path: str) -> None:
    """Write :func:`export_namespace` to ``path`` (called by the grader's injected cell)."""
    data = json.dumps(export_namespace(namespace, names), allow_nan=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(data)


def export_cell_source(names: Sequence[str], path: Path) -> str:
    """The cell the grader appends to a submission."""
    return (
        "__import__('vlab.grading.exports', fromlist=['dump_exports']).dump_exports("
        f"globals(), {list(names)!r}, {str(path)!r})"
    )


def load_exports(path: Path, dir_fd: int | None = None) -> Exported:
    """Read what the kernel exported (untrusted: size-limited, shape-checked). Missing file → empty.

    :param dir_fd: open directory ``path`` is relative to (the grader reads the student's directory through
        it, never following a symlink the student planted).
    """
    try:
        raw = _read_regular_file(path, _MAX_EXPORTS_BYTES, dir_fd)
    except FileNotFoundError:
        return Exported(error="the notebook exported nothing (it did not finish)")
    except OSError as exc:
        return Exported(error=f"unreadable exports: {exc.strerror or exc}")
    if raw is None:
        return Exported(error=f"the exports are larger than {_MAX_EXPORTS_BYTES >> 20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return Exported(error="the exports are not valid JSON (or nested too deeply)")
    return Exported.from_json(data)


def with_pins(exports: Exported, pins: Mapping[str, Exported]) -> Exported:
    """``exports`` with each pinned name as its locked cell left it, whatever later cells assigned.

    :param pins: name → the pin export that took it (:func:`load_exports` of :data:`PINNED_FILE` right after
        the locked cell ran). A name the pin lacks (the locked cell failed before defining it) is missing,
        even if a later cell defined it; a function is left to the verified helpers and not pinned.
    """
    values, functions = dict(exports.values), dict(exports.functions)
    unexportable, missing = dict(exports.unexportable), list(exports.missing)
    for name, taken in pins.items():
        if name in taken.functions:
            continue
        values.pop(name, None)
        functions.pop(name, None)
        unexportable.pop(name, None)
        missing = [n for n in missing if n != name]
        if name in taken.values:
            values[name] = taken.values[name]
        elif name in taken.unexportable:
            unexportable[name] = taken.unexportable[name]
        else:
            missing.append(name)
    return replace(exports, values=values, functions=functions, unexportable=unexportable, missing=tuple(missing))


def _read_regular_file(path: Path, limit: int, dir_fd: int | None = None) -> bytes | None:
    """Read at most ``limit`` bytes of a regular file, never following a symlink the student planted."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(limit + 1)
    finally:
        os.close(fd)
    return None if len(raw) > limit else raw


# --- the student host: runs student functions in their own process ---------------------------


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


def _student_namespace(exports: Exported) -> dict[str, Any]:  # a Python namespace: any value
    """The student's functions re-created from source in a fresh namespace of their own."""
    import importlib

    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
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


class _ModuleGuard:
    """The lab's modules (and the builtins) as they were before any student code ran here, put back after it.

    Undoes what a student function's default argument or body assigns to ``vlab.*`` modules (e.g. replacing the
    function a helper scores with). Student code shares this process, so this is a second line: every verdict is
    computed in the grader, which student code never reaches.
    """

    def __init__(self) -> None:
        self._saved = {
            name: dict(vars(module))
            for name, module in sys.modules.items()
            if name in ("vlab", "builtins") or name.startswith("vlab.")
        }

    def restore(self) -> None:
        for name, saved in self._saved.items():
            module = sys.modules.get(name)
            if module is None:
                continue
            current = vars(module)
            for key in [k for k in current if k not in saved]:
                del current[key]
            for key, value in saved.items():
                if current.get(key, _ModuleGuard) is not value:
                    current[key] = value


class _Namespaces:
    """The student's functions (re-created once, before any helper exists) and the locked cells' helpers,
    defined afresh for every call so that nothing a student function did to them in one call survives."""

    def __init__(self, exports: Exported, helpers: Sequence[str]) -> None:
        import vlab
        import vlab.grading

        self._vlab = vlab
        self._code = [compile(definitions(source), f"<locked cell {n}>", "exec") for n, source in enumerate(helpers)]
        self.helper_names = defined_helpers(helpers)
        self.guard = _ModuleGuard()
        self.student = _student_namespace(exports)
        self.guard.restore()

    def function(self, name: str) -> Any:
        if name not in self.helper_names:
            return self.student[name]
        trusted: dict[str, Any] = {"__name__": "vlab_helpers", "vlab": self._vlab, "__builtins__": __builtins__}
        for code in self._code:
            with contextlib.suppress(Exception):  # a helper that cannot be defined here fails when called
                exec(code, trusted)
        for key, value in self.student.items():  # the student's answers fill in only what the locked cells
            if not key.startswith("__"):           # leave undefined: never a helper's module, constant or function
                trusted.setdefault(key, value)
        return trusted[name]


def _host_main(exports_path: str) -> int:
    """Serve calls: a first line with the locked cells' sources, then one JSON request per line on stdin,
    one JSON reply per line on the original stdout."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # student prints go to stderr, not into the protocol
    replies = os.fdopen(reply_fd, "w", encoding="utf-8")
    setup = json.loads(sys.stdin.readline() or "{}")
    namespaces = _Namespaces(load_exports(Path(exports_path)), setup.get("helpers", []))
    for line in sys.stdin:
        request = json.loads(line)
        try:
            function = namespaces.function(request["name"])
            value = function(*decode(request["args"]), **decode(request["kwargs"]))
            reply: dict[str, Any] = {"ok": encode(value)}  # the host protocol's JSON reply
        except TypeError as exc:
            reply = {"error": f"TypeError: {exc}"}
        except NotImplementedError:
            reply = {"error": "NotImplementedError", "unanswered": True}
        except BaseException as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        namespaces.guard.restore()
        replies.write(json.dumps(reply, allow_nan=True) + "\n")
        replies.flush()
    return 0


class StudentHost:
    """A jailed process that runs the student's exported functions (and the locked cells' helpers) on request.

    :param command: argv that starts ``python -I -m vlab.grading.exports HOST EXPORTS`` inside the jail.
    :param call_timeout: seconds a single call may take before the process is killed.
    :param helpers: the verified sources of the locked code cells
        (:func:`~vlab.grading.integrity.verified_sources`).
    """

    def __init__(
        self, command: Sequence[str], call_timeout: float, env: Mapping[str, str], helpers: Sequence[str] = ()
    ) -> None:
        self._command = list(command)
        self._timeout = call_timeout
        self._env = dict(env)
        self._setup = json.dumps({"helpers": list(helpers)})
        self._proc: subprocess.Popen[str] | None = None
        self.calls = 0

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
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
        """Call the student's ``name(*args, **kwargs)`` and return its (decoded) result.

        :raises StudentCodeError: if it raised, did not return in time, or killed its process.
        :raises NotImplementedError: if it is still the stub.
        """
        shown = f"{name}({', '.join(repr(a) for a in args)})"
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
                line = stream.readline(_MAX_EXPORTS_BYTES)  # a huge return value is not read whole
                return line or None

    def close(self) -> None:
        """Kill the process (it has no state worth a graceful exit)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None


class GradedExports:
    """What checks see as ``sub`` at grading time: exported values, and proxies for functions.

    A name a locked cell defines (a helper such as ``drive``) always calls the instructor's definition in
    the student host, whatever the kernel exported under that name.
    """

    def __init__(self, exports: Exported, host: StudentHost | None, helpers: Iterable[str] = ()) -> None:
        self._exports = exports
        self._host = host
        self._helpers = frozenset(helpers)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        exports = self._exports
        if (name in self._helpers or name in exports.functions) and self._host is not None:
            host = self._host
            return lambda *args, **kwargs: host.call(name, args, kwargs)
        if name in exports.values and name not in self._helpers:
            return decode(exports.values[name])
        if name in exports.unexportable:
            fail(f"'{name}' could not be exported from the notebook: {exports.unexportable[name]}")
        fail(f"'{name}' is not defined: run the cell that defines it, and keep its name")

    def __contains__(self, name: str) -> bool:
        return name in self._exports.values or name in self._exports.functions or name in self._helpers


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "HOST":
        print("usage: python -m vlab.grading.exports HOST EXPORTS.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(_host_main(sys.argv[2]))
