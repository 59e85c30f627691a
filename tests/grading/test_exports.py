"""Exports: values as tagged JSON, functions as source with what they use (the hosts: test_hosts.py)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from vlab.grading.exports import Exported, decode, encode, export_namespace, with_pins


@pytest.mark.parametrize(
    "value",
    [1, 2.5, "s", None, [1, (2, 3)], {"a": {1, 2}}, {(1, 2): "tuple key"}, b"\x00\xff", {"$x": 1}],
)
def test_values_round_trip_through_json(value: object) -> None:
    assert decode(json.loads(json.dumps(encode(value)))) == value


def test_unencodable_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        encode(open)


def _notebook_namespace() -> dict[str, object]:
    """A namespace like a notebook's, with functions whose source lives in a real file."""
    source = (
        "import math\nfrom math import sqrt\nSCALE = 3\n"
        "def helper(x):\n    return sqrt(x) * SCALE\n"
        "def answer(x):\n    return helper(x) + math.floor(0.5)\n"
    )
    path = Path(__file__).parent / "data" / "_exports_case.py"
    module = types.ModuleType("__main__")
    exec(compile(source, str(path), "exec"), module.__dict__)
    import linecache

    linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
    return module.__dict__


def test_function_exports_bring_what_they_use() -> None:
    exported = export_namespace(_notebook_namespace(), ["answer", "missing_name"])
    assert set(exported["functions"]) == {"answer", "helper"}
    assert exported["values"] == {"SCALE": 3}
    assert exported["modules"] == {"math": "math"}
    assert exported["imports"] == {"sqrt": ["math", "sqrt"]}
    assert exported["missing"] == ["missing_name"]


def test_a_parameter_named_like_a_global_is_not_a_dependency() -> None:
    """Lab 05's bug: a parameter ``dump`` made the exporter ship a 128 MiB global ``dump`` too."""
    from vlab.grading.exports import _used_names

    source = (
        "def leak_offsets(dump, secret):\n"
        "    found = [i for i in range(len(dump)) if dump.startswith(secret, i)]\n"
        "    return found[:limit]\n"
    )
    namespace: dict[str, object] = {}
    exec(source, namespace)
    used = _used_names(source, namespace["leak_offsets"])
    assert "limit" in used and "len" in used and "range" in used
    assert "dump" not in used and "secret" not in used and "found" not in used


def _export(**values: object) -> Exported:
    return Exported.from_json(export_namespace(values, list(values)))  # as the grader reads the kernel's file


def test_with_pins_keeps_what_the_locked_cell_left_whatever_came_later() -> None:
    final = _export(measured=0, answer=42)  # a later cell set measured = 0
    pins = {"measured": _export(measured=17)}
    merged = with_pins(final, pins)
    assert merged.values["measured"] == 17 and merged.values["answer"] == 42
    assert final.values["measured"] == 0  # the final export itself is not changed


def test_a_name_the_locked_cell_never_defined_stays_missing_even_if_a_later_cell_defines_it() -> None:
    final = _export(measured=0)
    taken = Exported.from_json(export_namespace({}, ["measured"]))  # the locked cell failed before defining it
    merged = with_pins(final, {"measured": taken})
    assert "measured" not in merged.values and merged.missing == ("measured",)


def test_a_pinned_function_is_left_to_the_verified_helpers() -> None:
    final = Exported(functions={"helper": "def helper():\n    return 1\n"})  # a notebook function, as exported
    taken = Exported(functions={"helper": "def helper():\n    return 2\n"})
    assert with_pins(final, {"helper": taken}) == final


def test_malformed_exports_are_dropped_entry_by_entry_never_a_grader_error() -> None:
    forged = {"values": {"a": 1}, "functions": {"f": 3, "g": "def g(): pass"}, "imports": {"h": ["m"], "i": ["m", "q"]},
              "missing": [["unhashable"], "x"], "unexportable": "no", "modules": []}
    read = Exported.from_json(forged)
    assert read == Exported(values={"a": 1}, functions={"g": "def g(): pass"}, imports={"i": ("m", "q")},
                            missing=("x",))
    assert read.problems == {"x": "not defined"}
    assert Exported.from_json([1, 2]).error == "malformed exports"
    assert Exported.from_json(read.to_json()) == read
