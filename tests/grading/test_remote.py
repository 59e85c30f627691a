"""Objects by reference between the two hosts: the protocol on a real socket pair, the other side in a thread.

The helper side lends real toy-VMM objects (an exit of a real guest run) under the student allow-list; the
"student" side runs in a thread of this process, which is enough to test what crosses and what is refused
(tests/grading/test_hosts.py runs the two sides as the jailed processes they are when grading).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vlab.grading.remote import FOR_STUDENT, OPEN, Peer, PeerGone, Remote
from vlab.labs import trap_emulate as lab
from vlab.toyvmm import Scheduler
from vlab.toyvmm.devices import UART
from vlab.toyvmm.exits import Exit
from vlab.toyvmm.isa import Insn
from vlab.toyvmm.machine import Machine
from vlab.toyvmm.vcpu import VCPUState


class Pair:
    """A helper peer (this thread) and a student peer serving ``names`` in a thread of its own."""

    def __init__(self, names: dict[str, Callable[..., Any]]) -> None:
        ours, theirs = socket.socketpair()
        self.helper = Peer(ours, FOR_STUDENT)
        self.student = Peer(theirs, OPEN)
        self._thread = threading.Thread(target=self.student.serve, args=(names,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.helper.close()
        self._thread.join(5)


@pytest.fixture
def pair() -> Iterator[Callable[[dict[str, Callable[..., Any]]], Pair]]:
    made: list[Pair] = []

    def make(names: dict[str, Callable[..., Any]]) -> Pair:
        made.append(Pair(names))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _an_exit() -> Exit:
    """A real exit: the first CSR exit of a real guest (the VMM's own handler does the work afterwards)."""
    caught: list[Exit] = []

    def keep(exit: Exit) -> None:
        caught.append(exit)
        exit.vcpu.guest.machine.request_stop("caught")

    machine = Machine()
    lab.run_guest("memdirty", {"CSR_READ": keep, "CSR_WRITE": keep}, machine=machine, ms=1)
    assert caught
    return caught[0]


def test_values_enums_and_records_cross_by_value_and_objects_by_reference(pair: Any) -> None:
    seen: dict[str, Any] = {}

    def handler(exit: Any) -> Any:
        seen["class"] = isinstance(exit, Exit) and isinstance(exit, Remote)
        seen["same"] = exit.vcpu is exit.vcpu
        seen["insn"] = exit.insn
        seen["reason"] = exit.reason
        seen["state"] = exit.vcpu.state
        seen["pc"] = exit.vcpu.pc
        return exit.vcpu  # comes home as the helper's own object

    exit = _an_exit()
    helper = pair({"handler": handler}).helper
    back = helper.function("handler")(exit)
    assert back is exit.vcpu
    assert seen["class"] and seen["same"]
    assert type(seen["insn"]) is Insn and seen["insn"] == exit.insn
    assert seen["reason"] is exit.reason and seen["state"] is exit.vcpu.state and isinstance(seen["state"], VCPUState)
    assert seen["pc"] == exit.vcpu.pc


def test_a_handler_changes_only_what_the_vmm_lets_it_change(pair: Any) -> None:
    outcomes: dict[str, str] = {}

    def attempt(name: str, action: Callable[[], object]) -> None:
        try:
            action()
            outcomes[name] = "done"
        except PermissionError as exc:
            outcomes[name] = f"refused: {exc}"

    def handler(exit: Any) -> None:
        uart = exit.vcpu.guest.uart
        attempt("append", lambda: uart.output.append(65))
        attempt("extend", lambda: uart.output.__iadd__(b"BC"))
        attempt("value", lambda: setattr(exit, "value", 7))
        attempt("state", lambda: setattr(exit.vcpu, "state", VCPUState.BLOCKED))
        attempt("shadow", lambda: exit.vcpu.shadow.__setitem__(5, (1, 2, 3)))
        attempt("csrs", lambda: exit.vcpu.csrs.__setitem__(0x140, 7))  # sscratch, as a handler may
        attempt("private", lambda: exit._pc)
        attempt("index", lambda: setattr(exit.vcpu, "index", 9))
        attempt("exits", lambda: exit.vcpu.guest.exits.__setitem__(0, 0))

    exit = _an_exit()
    vcpu = exit.vcpu
    before = list(vcpu.guest.exits)
    pair({"handler": handler}).helper.function("handler")(exit)
    assert bytes(vcpu.guest.uart.output).endswith(b"ABC")
    assert exit.value == 7 and vcpu.state is VCPUState.BLOCKED and vcpu.shadow[5] == (1, 2, 3)
    assert outcomes["private"].startswith("refused") and "only public attributes" in outcomes["private"]
    assert outcomes["index"].startswith("refused") and "only csrs, shadow, state of a VCPU" in outcomes["index"]
    assert vcpu.csrs[0x140] == 7 and outcomes["csrs"] == "done"
    assert "read-only" in outcomes["exits"] and list(vcpu.guest.exits) == before  # refused, not done to a copy


def _forge(helper: Peer, raw: dict[str, Any]) -> Any:
    """Send the helper a request the student side's code would never make: as if written to the socket by hand."""
    helper._send({"id": 10**6, **raw})
    reply = helper._receive()
    return reply


def test_forged_requests_are_refused_by_the_owner(pair: Any) -> None:
    """The student side owns its socket end: the owner's checks, not the proxy's, are the boundary."""
    exit = _an_exit()
    student_side: dict[str, Any] = {}

    def keep(exit: Any) -> None:
        student_side["ref"] = exit._vlab_ref
        student_side["peer"] = exit._vlab_peer
        raw = student_side["peer"]
        requests: dict[str, dict[str, Any]] = {
            "dunder": {"op": "getattr", "target": {"$own": exit._vlab_ref}, "operands": ["__init__"]},
            "private": {"op": "getattr", "target": {"$own": exit._vlab_ref}, "operands": ["_pc"]},
            "unknown-ref": {"op": "getattr", "target": {"$own": 999999}, "operands": ["vcpu"]},
            "by-name": {"op": "call", "target": "drive", "operands": [[], {}]},
            "bad-op": {"op": "exec", "target": {"$own": exit._vlab_ref}, "operands": []},
            "record-of-a-function": {"op": "getattr", "target": {"$own": exit._vlab_ref},
                                     "operands": [{"$record": ["vlab.grading.hosts", "_helper_main", []]}]},
            "enum-of-a-module": {"op": "getattr", "target": {"$own": exit._vlab_ref},
                                 "operands": [{"$enum": ["os", "system", "x"]}]},
        }
        for name, request in requests.items():
            student_side[name] = _forge(raw, request)

    pair({"keep": keep}).helper.function("keep")(exit)
    for name in ("dunder", "private", "unknown-ref", "by-name", "bad-op", "record-of-a-function", "enum-of-a-module"):
        reply = student_side[name]
        assert "error" in reply and "ok" not in reply, (name, reply)
    assert "only public attributes" in student_side["private"]["error"]
    assert "not a record" in student_side["record-of-a-function"]["error"]
    assert "not a lab class" in student_side["enum-of-a-module"]["error"]


def test_calls_nest_both_ways_and_student_objects_stay_in_the_student_host(pair: Any) -> None:
    from vlab.qemu.fields import shown

    class Doubler:  # a student object the helper drives (lab 04's scheduler)
        def twice(self, callback: Any, x: int) -> int:
            return int(callback(x)) * 2

    helper = pair({"make": Doubler}).helper
    made = helper.function("make")()
    assert isinstance(made, Remote) and not isinstance(made, Doubler)
    assert made.twice(shown, 21) == 42  # helper -> student -> a lab function of the helper's -> back
    with pytest.raises(PermissionError, match="may not call a function of the grader's"):
        made.twice(lambda x: x, 21)  # any other function of the helper's is not for student code


def test_a_student_subclass_of_a_lab_class_passes_isinstance(pair: Any) -> None:
    from vlab.toyvmm import RoundRobin

    class Mine(RoundRobin):
        pass

    made = pair({"make": Mine}).helper.function("make")()
    assert isinstance(made, Scheduler) and isinstance(made, RoundRobin)
    assert [c.__name__ for c in made.__class__.__mro__][:2] == ["Mine", "RoundRobin"]


def test_a_reference_kept_past_its_call_is_refused_with_a_clear_error(pair: Any) -> None:
    kept: list[Any] = []
    helper = pair({"keep": kept.append, "use": lambda: kept[0].output}).helper
    uart = UART()
    helper.function("keep")(uart)
    helper.release_all()  # the grader's call returned
    with pytest.raises(PermissionError, match="no longer valid"):
        helper.function("use")()


def test_exceptions_cross_as_builtins_or_named(pair: Any) -> None:
    def stub() -> None:
        raise NotImplementedError

    class Custom(Exception):
        pass

    def custom() -> None:
        raise Custom("why")

    helper = pair({"stub": stub, "custom": custom, "div": lambda: 1 / 0}).helper
    with pytest.raises(NotImplementedError):
        helper.function("stub")()
    with pytest.raises(ZeroDivisionError):
        helper.function("div")()
    with pytest.raises(Exception, match="Custom: why"):
        helper.function("custom")()


def test_a_peer_that_writes_garbage_or_leaves_is_gone() -> None:
    ours, theirs = socket.socketpair()
    helper = Peer(ours, FOR_STUDENT)
    theirs.sendall(b"[1, 2]\n")
    with pytest.raises(PeerGone, match="not a message"):
        helper.function("f")()
    theirs.sendall(json.dumps({"re": 1}).encode()[:5])
    theirs.close()
    with pytest.raises(PeerGone):
        helper.function("f")()


def test_a_model_called_by_a_helper_may_not_boot_a_guest_in_the_student_host_either() -> None:
    """``boots_refused`` around a helper's call holds where the student's model runs (a context variable)."""
    from vlab.toyvmm.machine import BOOT_REFUSAL, boots_refused

    ours, theirs = socket.socketpair()
    helper = Peer(ours, FOR_STUDENT, carried=[BOOT_REFUSAL])
    student = Peer(theirs, OPEN, carried=[BOOT_REFUSAL])

    def measures_instead() -> int:
        return len(lab.run_guest("hello").output)

    threading.Thread(target=student.serve, args=({"model": measures_instead},), daemon=True).start()
    assert helper.function("model")() > 0  # outside the context it may
    with boots_refused("a model predicts"), pytest.raises(Exception, match=r"VlabError: .*no guest may boot here"):
        helper.function("model")()
    assert helper.function("model")() > 0  # and only while the helper is inside it
    helper.close()


def test_what_a_class_declares_fixed_travels_with_the_reference(pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading an exit's reason, vCPU and instruction, a vCPU's guest, a guest's UART is no request; the rest is."""
    served: list[str] = []

    def read(exit: Any) -> Any:
        return [exit.reason, exit.addr, exit.vcpu.index, exit.vcpu.guest.name, exit.vcpu.guest.uart.text]

    exit = _an_exit()
    helper = pair({"read": read}).helper
    perform = helper._perform

    def counted(message: Any) -> Any:
        served.append(message["op"])
        return perform(message)

    monkeypatch.setattr(helper, "_perform", counted)
    got = helper.function("read")(exit)
    assert got == [exit.reason, exit.addr, 0, exit.vcpu.guest.name, exit.vcpu.guest.uart.text]
    assert served == ["getattr"]  # the UART's text (a property) only


def test_a_private_name_declared_fixed_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlab.grading.remote import fixed_attributes

    monkeypatch.setattr(UART, "REMOTE_FIXED", frozenset({"output", "_secret"}), raising=False)
    assert fixed_attributes(UART()) == {"output"}
    assert fixed_attributes({"REMOTE_FIXED": 1}) == frozenset()  # only a lab class declares any
