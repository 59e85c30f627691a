"""What leaves the student's kernel, and how checks call the student's functions.

1. **In the kernel**, the grader's last injected cell calls :func:`dump_exports`: each exported
   name becomes JSON — values through :func:`encode` (tuples, sets, bytes and non-string dict
   keys are tagged so they come back as they were), notebook functions as their *source text*,
   together with what they use (other notebook functions, modules, imported callables and
   JSON-able globals, found by parsing the source).
2. **In the grader**, :func:`load_exports` reads them back as an :class:`Exported` (untrusted: size-
   limited, shape-checked) and :func:`with_pins` puts back what locked cells left in the names they
   export. :mod:`vlab.grading.hosts` then re-creates the functions in a jailed process of their own.

Only JSON crosses the boundary in either direction; nothing is unpickled.
"""

from __future__ import annotations

import ast
import base64
import inspect
import json
import os
import stat
import textwrap
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "EXPORTS_FILE",
    "PINNED_FILE",
    "Exported",
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


_PLAIN = frozenset({type(None), bool, int, float, str, list, tuple, set, frozenset, bytes, bytearray, dict})


def encode(value: Any, depth: int = 0, other: Callable[[Any, int], Any] | None = None) -> Any:
    """``value`` as JSON-able data; tuples, sets, bytes and non-str dict keys are tagged.

    :param other: what to do with anything but those builtin types (subclasses included) -- e.g. pass it by
        reference (:mod:`vlab.grading.remote`); without it, only numpy values are converted.
    :raises TypeError: for anything else (files, VM objects, classes, ...).
    """
    if depth > 50:
        raise _Unencodable("nested too deeply")
    if other is not None and type(value) not in _PLAIN:
        return other(value, depth)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode(v, depth + 1, other) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, depth + 1, other) for v in value]}
    if isinstance(value, set | frozenset):
        return {"$set": [encode(v, depth + 1, other) for v in sorted(value, key=repr)]}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, depth + 1, other) for k, v in value.items()}
        return {"$dict": [[encode(k, depth + 1, other), encode(v, depth + 1, other)] for k, v in value.items()]}
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return encode(value.tolist(), depth + 1, other)
    raise _Unencodable(f"a {type(value).__name__} cannot be exported")


def decode(data: Any, other: Callable[[str, Any], Any] | None = None) -> Any:
    """The inverse of :func:`encode`.

    :param other: rebuilds a one-key object whose key is another ``$`` tag (``other(tag, body)``); without
        it such an object stays a dict.
    """
    if isinstance(data, list):
        return [decode(v, other) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1 or (other is not None and "$ref" in data):
        tag: str
        body: Any
        tag, body = ("$ref", data) if "$ref" in data else next(iter(data.items()))
        if tag == "$tuple":
            return tuple(decode(v, other) for v in body)
        if tag == "$set":
            return {_hashable(decode(v, other)) for v in body}
        if tag == "$bytes":
            return base64.b64decode(body)
        if tag == "$dict":
            return {_hashable(decode(k, other)): decode(v, other) for k, v in body}
        if other is not None and tag.startswith("$"):
            return other(tag, body)
    return {k: decode(v, other) for k, v in data.items()}


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
