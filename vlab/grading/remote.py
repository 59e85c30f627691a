"""Objects by reference between the helper host and the student host: JSON lines over one socket.

At grading time the instructor's helpers (``drive``, ``trial``, ...) and the student's functions run in
two processes (:mod:`vlab.grading.hosts`), so that nothing a student function does reaches the code
that computes what the checks judge. Calls cross between them both ways and nest: a helper boots a
guest, the VMM calls the student's handler, the handler calls a method of the helper's vCPU, ...

* A **value** (what :func:`~vlab.grading.exports.encode` takes, paths, and the lab's enums and records:
  enum members, named tuples and frozen dataclasses of ``vlab`` modules) crosses as JSON and arrives as
  an equal object.
* Any **other object** stays in the process that owns it and crosses as a reference: the other side
  gets a :class:`Remote`, whose attribute reads and writes, calls, item reads, ``in``, ``len``, ``bool``,
  iteration and ``repr`` are requests back to the owner. A reference that comes home is the object
  itself again, so identity holds (``exit.vcpu is exit.vcpu``).
* While a side waits for the reply to its request it serves the other side's requests, so calls nest
  to any depth on one socket, and nothing runs concurrently.
* What the peer may do to an object is the owner's :class:`Policy`. The helper host serves the student
  under :data:`FOR_STUDENT`, an allow-list: public attributes (no ``_`` in front) of the lab's own
  objects (classes of ``vlab`` modules) and read-only access to containers, writes only to the attributes
  a class names in ``REMOTE_WRITABLE`` (an MMIO-read handler's ``exit.value``), and never a module, a
  class or a code object. A mutable container an attribute holds is lent, not copied, so that changing it
  either changes the owner's (a ``REMOTE_WRITABLE`` attribute's) or fails loudly -- never silently in a
  copy, which the student's notebook would not do. The student host serves the helpers under
  :data:`OPEN`: they are trusted.
* A lab class may name in ``REMOTE_FIXED`` attributes that never change: they travel with an object's
  first reference, so reading them is no request (an exit's reason, vCPU and instruction; a vCPU's guest).
* The helper host forgets what it lent when the grader's call returns (:meth:`Peer.release_all`): a
  reference a student function keeps in a global and uses in a later call gets a clear error. The
  student host's objects (a scheduler the helpers drive) live as long as it does.

Only JSON crosses, in both directions: nothing is unpickled, and a record or enum is rebuilt only from a
class of a ``vlab`` module.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import enum
import importlib
import inspect
import json
import socket
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from vlab.grading.exports import decode, encode

__all__ = ["FOR_STUDENT", "OPEN", "PeerGone", "Peer", "Policy", "Remote", "RemoteError"]

_MAX_MESSAGE = 512 * 2**20  # a guest's whole RAM, as lab 05's dump_ram returns it: both hosts are memory-bounded
_OPS = ("call", "getattr", "setattr", "getitem", "setitem", "delitem", "iadd", "contains", "len", "bool", "list",
        "repr")


class RemoteError(RuntimeError):
    """An exception raised on the other side that is not a builtin one (its type name and message)."""


class PeerGone(RemoteError):
    """The other process closed the socket or sent something that is not a message: it is not usable."""


def _is_lab_class(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module == "vlab" or module.startswith("vlab.")


_CONTAINERS = (dict, list, tuple, set, frozenset, bytearray, types.MappingProxyType)
_READ_METHODS = frozenset({"get", "keys", "items", "values", "count", "index", "copy"})


@dataclass(frozen=True)
class Policy:
    """What the peer may do to this side's objects.

    :param restricted: apply the allow-list (the helper host's objects, seen by student code); False: anything.
    """

    restricted: bool

    def check(self, op: str, obj: Any, name: str | None = None, writable: bool = False) -> None:
        """Raise ``PermissionError`` naming what was refused, if the peer may not do ``op`` on ``obj``.

        :param writable: ``obj`` was lent through an attribute its owner's class names in ``REMOTE_WRITABLE``
            (e.g. the UART's output buffer): its contents may be changed too.
        """
        if not self.restricted:
            return
        kind = type(obj).__name__
        if isinstance(obj, types.ModuleType | type) or inspect.iscode(obj) or inspect.isframe(obj):
            raise PermissionError(f"student code may not use a {kind} of the grader's")
        container = isinstance(obj, _CONTAINERS)
        if op == "getattr":
            assert name is not None
            if name.startswith("_"):
                raise PermissionError(f"student code may not read {kind}.{name}: only public attributes")
            if container and not writable and name not in _READ_METHODS and _builtin_member(type(obj), name):
                raise PermissionError(f"student code may not call {kind}.{name} on the grader's data: it is read-only")
            if not container and not _is_lab_class(type(obj)):
                raise PermissionError(f"student code may not use a {kind} of the grader's")
        elif op == "setattr":
            assert name is not None
            if name not in writable_attributes(obj):
                raise PermissionError(f"student code may not set {kind}.{name}: a handler changes only "
                                      f"{', '.join(sorted(writable_attributes(obj))) or 'nothing'} of a {kind}")
        elif op in ("setitem", "delitem", "iadd") and not (container and writable):
            raise PermissionError(f"student code may not change this {kind} of the grader's: it is read-only")
        elif op == "call" and not _callable_for_student(obj):
            raise PermissionError(f"student code may not call a {kind} of the grader's")


def fixed_attributes(obj: Any) -> frozenset[str]:
    """What a lab object's class names in ``REMOTE_FIXED``: public attributes that never change in its life,
    sent by value with its first reference (an exit's reason and vCPU, a vCPU's guest)."""
    names: object = getattr(type(obj), "REMOTE_FIXED", frozenset())
    if not _is_lab_class(type(obj)) or not isinstance(names, frozenset):
        return frozenset()
    return frozenset(name for name in names if isinstance(name, str) and not name.startswith("_"))


def _builtin_member(cls: type, name: str) -> bool:
    """Whether ``cls.name`` is a builtin container's (``dict.update``), not an attribute a lab class defines
    (``HandlerTable.withheld``, a lab class that is also a dict)."""
    owner = next((c for c in cls.__mro__ if name in vars(c)), None)  # None: an attribute of the instance
    return owner is not None and owner.__module__ == "builtins"


def writable_attributes(obj: Any) -> frozenset[str]:
    """What student code may assign (or change in place) on a lab object: its class's ``REMOTE_WRITABLE``."""
    names: object = getattr(type(obj), "REMOTE_WRITABLE", frozenset())
    return frozenset(names) if isinstance(names, frozenset) else frozenset()


def _callable_for_student(obj: Any) -> bool:
    """A bound method of a lab object or of a container (a read method, already checked), or a lab function."""
    owner = getattr(obj, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        return _is_lab_class(type(owner)) or isinstance(owner, _CONTAINERS)
    return inspect.isfunction(obj) and (obj.__module__ == "vlab" or obj.__module__.startswith("vlab."))


#: The helper host's objects as student code may use them.
FOR_STUDENT = Policy(restricted=True)
#: The student host's objects as the (trusted) helpers may use them.
OPEN = Policy(restricted=False)


class Remote:
    """An object that lives in the other process; every use is a request to it (see the module docstring)."""

    __slots__ = ("_vlab_fixed", "_vlab_kind", "_vlab_methods", "_vlab_peer", "_vlab_ref")

    def __init__(
        self, peer: Peer, ref: int, kind: str, methods: frozenset[str], fixed: Mapping[str, Any] | None = None
    ) -> None:
        object.__setattr__(self, "_vlab_peer", peer)
        object.__setattr__(self, "_vlab_ref", ref)
        object.__setattr__(self, "_vlab_kind", kind)
        object.__setattr__(self, "_vlab_methods", methods)
        object.__setattr__(self, "_vlab_fixed", dict(fixed or {}))

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # what isinstance() asks: a stand-in subclass of the lab class it derives from
        peer: Peer = self._vlab_peer
        return peer._stand_in(self._vlab_kind)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._vlab_fixed:  # sent with the reference: it never changes
            return self._vlab_fixed[name]
        if name in self._vlab_methods:  # a method: calling it is the one request
            return _Method(self, name)
        return self._vlab_peer.request("getattr", self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._vlab_peer.request("setattr", self, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._vlab_peer.request("call", self, list(args), dict(kwargs))

    def __getitem__(self, key: Any) -> Any:
        return self._vlab_peer.request("getitem", self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._vlab_peer.request("setitem", self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._vlab_peer.request("delitem", self, key)

    def __iadd__(self, other: Any) -> Any:
        return self._vlab_peer.request("iadd", self, other)

    def __contains__(self, key: Any) -> bool:
        return bool(self._vlab_peer.request("contains", self, key))

    def __len__(self) -> int:
        return int(self._vlab_peer.request("len", self))

    def __bool__(self) -> bool:
        return bool(self._vlab_peer.request("bool", self))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._vlab_peer.request("list", self))

    def __repr__(self) -> str:
        return str(self._vlab_peer.request("repr", self))

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return hash((id(self._vlab_peer), self._vlab_ref))


class _Method:
    """``remote.name`` for a method of the remote object's class: one request when called."""

    __slots__ = ("_name", "_owner")

    def __init__(self, owner: Remote, name: str) -> None:
        self._owner, self._name = owner, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._vlab_peer.request("call", self._owner, list(args), dict(kwargs), self._name)

    def __repr__(self) -> str:
        return f"<method {self._name} of {self._owner!r}>"


@dataclass(frozen=True)
class _ByReference:
    """A container an attribute holds, lent by reference instead of copied: a change the student's code makes
    to it then changes the owner's (``writable``: the value of a ``REMOTE_WRITABLE`` attribute) or is refused
    with an error -- never made silently to a copy, as it would not be in the student's notebook."""

    value: Any
    writable: bool


def _methods(cls: type) -> frozenset[str]:
    """The public methods of a class: ``obj.name(...)`` on a reference to one is a single request."""
    return frozenset(name for name, member in inspect.getmembers(cls)
                     if not name.startswith("_") and inspect.isroutine(member))


def _record_class(path: Sequence[Any]) -> Any:
    """The enum or record class a ``$enum``/``$record`` tag names, only from a ``vlab`` module."""
    module, qualname = str(path[0]), str(path[1])
    if not (module == "vlab" or module.startswith("vlab.")):
        raise ValueError(f"not a lab class: {module}.{qualname}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_record_class(cls: type) -> bool:
    """A named tuple or a frozen dataclass of a ``vlab`` module: passed by value, rebuilt from its fields."""
    if not _is_lab_class(cls):
        return False
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return True
    return dataclasses.is_dataclass(cls) and bool(cls.__dataclass_params__.frozen)  # type: ignore[attr-defined]


class Peer:
    """One end of the socket between the two hosts.

    :param sock: the connected socket (the jail gives each host its end on fd 3).
    :param policy: what the other side may do to this side's objects.
    :param carried: context variables (string values) whose value where a request is made holds where it is
        served too, e.g. the toy VMM's refusal to boot while a lab's model predicts.
    """

    def __init__(self, sock: socket.socket, policy: Policy, carried: Sequence[ContextVar[str | None]] = ()) -> None:
        self._sock = sock
        self._carried = {var.name: var for var in carried}
        self._reader = sock.makefile("r", encoding="utf-8", newline="\n")
        self._policy = policy
        self._names: Mapping[str, Any] = {}
        self._objects: dict[int, Any] = {}  # ref -> this side's object, lent to the other side
        self._writable: set[int] = set()    # refs whose contents the other side may change
        self._refs: dict[int, int] = {}     # id(object) -> ref
        self._remotes: dict[int, Remote] = {}  # the other side's ref -> its one proxy here
        self._sent_types: set[type] = set()
        self._methods: dict[str, frozenset[str]] = {}
        self._mro: dict[str, list[str]] = {}
        self._stand_ins: dict[str, type] = {}
        self._next = 0
        #: why the other side can no longer be used (it exited, or the stream is out of step), else None
        self.gone: str | None = None

    # -- what crosses --------------------------------------------------------------------------------

    def _to_wire(self, value: Any, depth: int = 0) -> Any:
        return encode(value, depth, other=self._other_to_wire)

    def _other_to_wire(self, value: Any, depth: int) -> Any:
        if isinstance(value, Remote) and value._vlab_peer is self:
            return {"$yours": value._vlab_ref}
        if isinstance(value, _ByReference):
            lent = self._lend(value.value, depth)
            if value.writable:
                self._writable.add(lent["$ref"])
            return lent
        if isinstance(value, PurePath):
            return {"$path": str(value)}
        if isinstance(value, enum.Enum) and _is_lab_class(type(value)):
            return {"$enum": [type(value).__module__, type(value).__qualname__, value.name]}
        if _is_record_class(type(value)):
            fields = (list(value) if isinstance(value, tuple)
                      else [getattr(value, f.name) for f in dataclasses.fields(value)])
            cls = type(value)
            return {"$record": [cls.__module__, cls.__qualname__, [self._to_wire(v, depth + 1) for v in fields]]}
        if isinstance(value, enum.Enum):  # another enum: its value
            return self._to_wire(value.value, depth + 1)
        return self._lend(value, depth)

    def _lend(self, value: Any, depth: int = 0) -> dict[str, Any]:
        cls = type(value)
        ref = self._refs.get(id(value))
        lent: dict[str, Any] = {}
        if ref is None or self._objects.get(ref) is not value:
            self._next += 1
            ref = self._next
            self._objects[ref], self._refs[id(value)] = value, ref
            fixed = fixed_attributes(value)
            if fixed:  # what never changes travels with the first reference: reading it is no request
                lent["fixed"] = {name: self._to_wire(getattr(value, name), depth + 1) for name in sorted(fixed)}
        lent.update({"$ref": ref, "type": f"{cls.__module__}.{cls.__qualname__}"})
        if cls not in self._sent_types:  # the class's methods and ancestry, once per class
            self._sent_types.add(cls)
            lent["methods"] = sorted(_methods(cls)) if not isinstance(value, types.ModuleType | type) else []
            lent["mro"] = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__]
        return lent

    def _from_wire(self, data: Any) -> Any:
        return decode(data, other=self._other_from_wire)

    def _other_from_wire(self, tag: str, body: Any) -> Any:
        if tag == "$yours":
            if body not in self._objects:
                raise PermissionError("a reference from an earlier call is no longer valid: keep values, not objects")
            return self._objects[body]
        if tag == "$path":
            return Path(str(body))
        if tag == "$enum":
            cls = _record_class(body)
            if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
                raise ValueError(f"not an enum: {body[0]}.{body[1]}")
            return cls[str(body[2])]
        if tag == "$record":
            cls = _record_class(body)
            if not (isinstance(cls, type) and _is_record_class(cls)):
                raise ValueError(f"not a record: {body[0]}.{body[1]}")
            return cls(*(self._from_wire(v) for v in body[2]))
        if tag == "$ref":
            ref = int(body["$ref"])
            if ref not in self._remotes:
                kind = str(body.get("type", ""))
                if isinstance(body.get("methods"), list):
                    self._methods[kind] = frozenset(str(m) for m in body["methods"])
                if isinstance(body.get("mro"), list):
                    self._mro[kind] = [str(name) for name in body["mro"]]
                fixed = body.get("fixed")
                values = {str(k): self._from_wire(v) for k, v in fixed.items()} if isinstance(fixed, dict) else {}
                self._remotes[ref] = Remote(self, ref, kind, self._methods.get(kind, frozenset()), values)
            return self._remotes[ref]
        raise ValueError(f"unknown tag {tag}")

    def _stand_in(self, kind: str) -> type:
        """A local class for a remote object's ``__class__``: named like its class, derived from the first lab
        class in its ancestry (so ``isinstance(scheduler, Scheduler)`` holds for a student's subclass)."""
        if kind not in self._stand_ins:
            name = kind.rpartition(".")[2] or "Remote"
            stand_in: type = type(name, (), {})
            for ancestor in self._mro.get(kind, []):
                module, _, qualname = ancestor.rpartition(".")
                with contextlib.suppress(Exception):  # not a lab class, or one that cannot be subclassed
                    base = _record_class([module, qualname])
                    if isinstance(base, type) and base is not object:
                        stand_in = type(name, (base,), {})
                        break
            self._stand_ins[kind] = stand_in
        return self._stand_ins[kind]

    # -- requests ------------------------------------------------------------------------------------

    def function(self, name: str) -> Callable[..., Any]:
        """A callable for the other side's ``name`` (a student function, called by a helper)."""

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.request("call", name, list(args), dict(kwargs))

        call.__name__ = call.__qualname__ = name
        return call

    def request(self, op: str, target: Remote | str, *operands: Any) -> Any:
        """Send a request and serve the other side's requests until its reply comes."""
        self._next += 1
        ident = self._next
        where = target if isinstance(target, str) else {"$own": target._vlab_ref}
        context = {name: value for name, var in self._carried.items() if (value := var.get()) is not None}
        self._send({"id": ident, "op": op, "target": where, "operands": self._to_wire(list(operands)),
                    "context": context})
        while True:
            message = self._receive()
            if message.get("re") == ident:
                if "error" in message:
                    raise _rebuilt(str(message.get("kind", "")), str(message["error"]))
                return self._from_wire(message.get("ok"))
            self._serve(message)

    def send_setup(self, data: Any) -> None:
        """The first message: what the other side needs before it serves (plain JSON)."""
        self._send({"setup": data})

    def receive_setup(self) -> Any:
        """The other side's :meth:`send_setup`."""
        return self._receive().get("setup")

    def serve(self, names: Mapping[str, Any]) -> None:
        """Serve requests until the other side closes the socket.

        :param names: what the other side may call by name (the student host: the student's functions).
        """
        self._names = names
        while True:
            try:
                message = self._receive()
            except PeerGone:
                return
            self._serve(message)

    def release_all(self) -> None:
        """Forget every object lent to the other side (its references to them become invalid)."""
        self._objects.clear()
        self._refs.clear()
        self._writable.clear()

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    # -- serving -------------------------------------------------------------------------------------

    def _serve(self, message: Mapping[str, Any]) -> None:
        ident = message.get("id")
        try:
            with self._context(message.get("context")):
                value = self._perform(message)
            reply: dict[str, Any] = {"re": ident, "ok": self._to_wire(value)}
        except BaseException as exc:
            if isinstance(exc, PeerGone):
                raise
            reply = {"re": ident, "kind": type(exc).__name__, "error": str(exc)[:2000]}
        try:
            self._send(reply)
        except (TypeError, ValueError) as exc:  # a value json cannot write (a recursion, ...)
            self._send({"re": ident, "kind": "TypeError", "error": f"the result cannot be sent: {exc}"})

    @contextlib.contextmanager
    def _context(self, context: Any) -> Iterator[None]:
        """The carried variables set as the request's sender had them (only to a string: never unset)."""
        tokens = []
        if isinstance(context, dict):
            for name, value in context.items():
                if name in self._carried and isinstance(value, str):
                    tokens.append((self._carried[name], self._carried[name].set(value)))
        try:
            yield
        finally:
            for var, token in reversed(tokens):
                var.reset(token)

    def _perform(self, message: Mapping[str, Any]) -> Any:
        op, where = message.get("op"), message.get("target")
        operands = self._from_wire(message.get("operands", []))
        if op not in _OPS or not isinstance(operands, list):
            raise ValueError(f"not a request: {op!r}")
        if isinstance(where, str):
            if op != "call" or where not in self._names:
                raise NameError(f"{where!r} is not a function this side serves")
            target = self._names[where]
        elif isinstance(where, dict) and isinstance(where.get("$own"), int):
            target = self._from_wire({"$yours": where["$own"]})
        else:
            raise ValueError("not a request: no target")
        return self._apply(op, target, operands, where["$own"] in self._writable if isinstance(where, dict) else False)

    def _apply(self, op: str, target: Any, operands: list[Any], writable: bool) -> Any:
        def check(what: str, obj: Any, name: str | None = None) -> None:
            self._policy.check(what, obj, name, writable)

        if op == "call":
            args, kwargs = operands[0], operands[1]
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("not a call")
            if len(operands) > 2:  # a method called through its owner
                name = str(operands[2])
                check("getattr", target, name)
                target = getattr(target, name)
            check("call", target)
            return target(*args, **kwargs)
        if op in ("getattr", "setattr"):
            name = str(operands[0])
            check(op, target, name)
            if op == "setattr":
                setattr(target, name, operands[1])
                return None
            value = getattr(target, name)
            if self._policy.restricted and isinstance(value, list | dict | set | bytearray):
                return _ByReference(value, writable=name in writable_attributes(target))
            return value
        check(op, target)
        if op == "getitem":
            return target[operands[0]]
        if op == "setitem":
            target[operands[0]] = operands[1]
            return None
        if op == "delitem":
            del target[operands[0]]
            return None
        if op == "iadd":
            target += operands[0]  # in place: the container is lent, its owner sees the change
            return _ByReference(target, writable=True)
        if op == "contains":
            return operands[0] in target
        if op == "len":
            return len(target)
        if op == "bool":
            return bool(target)
        if op == "list":
            return list(target)
        return repr(target)

    # -- the socket ------------------------------------------------------------------------------------

    def _gone(self, why: str) -> PeerGone:
        self.gone = self.gone or why
        return PeerGone(self.gone)

    def _send(self, message: Mapping[str, Any]) -> None:
        if self.gone is not None:  # once out of step, for good: a caller that caught PeerGone cannot go on
            raise PeerGone(self.gone)
        data = json.dumps(message, allow_nan=True) + "\n"
        try:
            self._sock.sendall(data.encode())
        except OSError as exc:
            raise self._gone(f"it is gone ({exc.strerror or exc})") from None

    def _receive(self) -> dict[str, Any]:
        if self.gone is not None:
            raise PeerGone(self.gone)
        try:
            line = self._reader.readline(_MAX_MESSAGE)
        except (OSError, UnicodeDecodeError) as exc:
            raise self._gone(f"it is gone ({exc})") from None
        if not line.endswith("\n"):
            raise self._gone("it exited" if not line else f"it sent a message over {_MAX_MESSAGE >> 20} MiB")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise self._gone("it sent something that is not JSON") from None
        if not isinstance(message, dict):
            raise self._gone("it sent something that is not a message")
        return message


def _rebuilt(kind: str, message: str) -> BaseException:
    """The other side's exception here: the builtin of that name (NotImplementedError stays itself), else
    a :class:`RemoteError` that names it."""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        try:
            return cls(message)
        except Exception:
            pass
    return RemoteError(f"{kind}: {message}")
