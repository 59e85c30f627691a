"""Hundreds of hostile or careless inputs: each is refused with a VlabError naming the field, the value, the
problem and the fix, before anything starts, and nothing is left behind.

Wrong types, values out of range, injection strings (commas, '=', JSON, newlines, NUL bytes), huge values,
symlinks and other non-files, for VMConfig, Disk, Nic, vm.conf and every VM method. VM methods are called on a
VM that was never started (validation comes before the state check), console methods on one real guest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vlab.errors import StateError, VlabError
from vlab.host import procfs
from vlab.paths import runtime_dir
from vlab.qemu import VM, Disk, Nic, VMConfig

pytestmark = [pytest.mark.qemu]


@dataclass
class Ctx:
    """Real files the cases point at: a good image, a symlink to it, a directory, a fifo, a missing path."""

    kernel: Path
    initrd: Path
    image: Path
    symlink: Path
    directory: Path
    fifo: Path
    missing: Path

    def vm(self) -> VM:
        return VM(VMConfig(kernel=self.kernel, initrd=self.initrd, accel="tcg"))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, guest_images: tuple[Path, Path]) -> Ctx:
    base = tmp_path_factory.mktemp("bad")
    image = base / "disk.img"
    image.write_bytes(b"\0" * 65536)
    (base / "link.img").symlink_to(image)
    (base / "dir").mkdir()
    os.mkfifo(base / "fifo")
    return Ctx(*guest_images, image, base / "link.img", base / "dir", base / "fifo", base / "missing.img")


INJECTION = ["a,b=c", "x,file.filename=/etc/shadow", '{"driver":"raw"}', "x\ny", "x\0y", "x\rY", "\x1b[2J",
             "a b", "=", ",", "", " "]


class Opaque:
    """An object of no type vlab knows, with a stable repr: test ids must not change between runs (pytest-xdist)."""

    def __repr__(self) -> str:
        return "<object>"


WRONG_TYPES: list[Any] = [5, 5.5, None, True, [], {}, b"bytes", Opaque()]
HUGE = "a" * 100_000

Case = tuple[str, Callable[[Ctx], Any]]


def config(**fields: Any) -> Callable[[Ctx], Any]:
    return lambda c: VMConfig(**({"kernel": c.kernel, "initrd": c.initrd} | fields))


def disk(**fields: Any) -> Callable[[Ctx], Any]:
    return lambda c: Disk(**({"path": c.image} | fields))


CASES: list[tuple[str, str, Callable[[Ctx], Any]]] = []
value: Any  # the loop variable of the cases below: a bad value, of any type


def add(field: str, label: str, call: Callable[..., Any]) -> None:
    """``call`` is typed loosely on purpose: most cases bind their loop value as a lambda default
    (``lambda c, v=value: ...``), which a ``Callable[[Ctx], Any]`` context cannot type, and the values
    are of the wrong type by design."""
    CASES.append((field, label, call))


# -- VMConfig ---------------------------------------------------------------------------------------------
for value in [*INJECTION, HUGE, "-name", "a" * 33, *WRONG_TYPES]:
    add("name", f"name={value!r:.30}", config(name=value))
for value in [5, True, [], b"/boot/vmlinuz", "", "x\0y", HUGE, "relative/missing"]:
    add("kernel", f"kernel={value!r:.30}", config(kernel=value))
    add("initrd", f"initrd={value!r:.30}", config(initrd=value))
for attr in ("kernel", "initrd"):
    add(attr, f"{attr}=symlink", lambda c, a=attr: VMConfig(**{"kernel": c.kernel, "initrd": c.initrd,
                                                              a: c.symlink}))
    add(attr, f"{attr}=directory", lambda c, a=attr: VMConfig(**{"kernel": c.kernel, "initrd": c.initrd,
                                                                a: c.directory}))
    add(attr, f"{attr}=fifo", lambda c, a=attr: VMConfig(**{"kernel": c.kernel, "initrd": c.initrd, a: c.fifo}))
for value in ["x\ny", "x\0y", "a" * 2048, 5, None, b"console=ttyS0", 'opt="unbalanced', "\x1b[2J"]:
    add("append", f"append={value!r:.30}", config(append=value))
add("append", "append+nics>2047", config(append="x" * 2040, nics=(Nic(ip="10.0.0.1/24"),)))
for value in ["a b", "x\ny", 5, "", "a" * 200, "/dev/sda1 vlab.ip0=1.2.3.4/8", "/dev/x,y", '"/dev/sda"']:
    add("root", f"root={value!r:.30}", config(root=value))
for value in ["x", -1, 0, True, [], 10**30, "9" * 400, "1e9", "5 M B", float("inf"), "16M", "0.5M", None]:
    add("mem", f"mem={value!r:.30}", config(mem=value))
for value in [0, -1, "x", True, 1.5, 10**9, [], "1 2", None, "4096"]:
    add("vcpus", f"vcpus={value!r:.30}", config(vcpus=value))
for value in [5, "xen", "", "tcg,thread=multi", None]:
    add("accel", f"accel={value!r:.30}", config(accel=value))
for value in [5, "isapc", "", "pc,accel=kvm", "microvm,pcie=on", None]:
    add("machine", f"machine={value!r:.30}", config(machine=value))
for value in [5, "disk.img", None, b"x"]:
    add("disks", f"disks={value!r:.30}", config(disks=value))
add("disks", "disks=[None]", config(disks=[None]))
add("disks", "disks=[5]", config(disks=[5]))
add("disks", "disks=9 disks", lambda c: VMConfig(kernel=c.kernel, initrd=c.initrd, disks=(Disk(c.image),) * 9))
for value in [5, "user", ["user"], [None], [{"mode": "user"}], None]:
    add("nics", f"nics={value!r:.30}", config(nics=value))
add("nics.mac", "two NICs, one MAC", config(nics=(Nic(mac="52:54:00:00:00:01"), Nic(mac="52:54:00:00:00:01"))))
for value in ["no", 1, None, "yes", 0]:
    add("balloon", f"balloon={value!r:.30}", config(balloon=value))
for value in [5, "max,+vmx", "host -device x", "", "a" * 100, "max\n"]:
    add("cpu", f"cpu={value!r:.30}", config(cpu=value))
for value in ["-device x", [5], ["\0"], ["a\nb"], 5, None]:
    add("extra_args", f"extra_args={value!r:.30}", config(extra_args=value))

# -- Disk -------------------------------------------------------------------------------------------------
for value in [5, None, "", "x\0y", HUGE, b"/tmp/x"]:
    add("disks.path", f"Disk.path={value!r:.30}", disk(path=value))
add("disks.path", "Disk.path=missing", lambda c: Disk(c.missing))
add("disks.path", "Disk.path=symlink", lambda c: Disk(c.symlink))
add("disks.path", "Disk.path=directory", lambda c: Disk(c.directory))
add("disks.path", "Disk.path=fifo", lambda c: Disk(c.fifo))
for value in ["no", 1, "yes"]:
    add("disks.overlay", f"Disk.overlay={value!r}", disk(overlay=value))
add("disks.overlay", "overlay with secret", disk(overlay=True, secret="pw"))
for value in [5, "", b"", "x" * 5000, ["pw"], bytearray(b"pw"), "\ud800"]:  # any other bytes are a passphrase
    add("disks.secret", f"Disk.secret={value!r:.20}", disk(secret=value))
for value in ["no", 1, None, "false"]:
    add("disks.readonly", f"Disk.readonly={value!r}", disk(readonly=value))
for value in ["explode", 5, None, "stop,x=y"]:
    add("disks.on_error", f"Disk.on_error={value!r}", disk(on_error=value))

# -- Nic --------------------------------------------------------------------------------------------------
for value in ["tap", 5, None, "user,restrict=off"]:
    add("nics.mode", f"Nic.mode={value!r}", lambda c, v=value: Nic(mode=v))
for value in ["UPPER", "toolongname", "a b", 5, "br,x", ""]:
    add("nics.bridge", f"Nic.bridge={value!r}", lambda c, v=value: Nic(mode="bridge", bridge=v))
add("nics.bridge", "bridge on a user NIC", lambda c: Nic(bridge="lab"))
add("nics.bridge", "bridge NIC without bridge", lambda c: Nic(mode="bridge"))
for value in [5, "10.0.0.1", "10.0.0.0/24", "10.0.0.255/24", "300.1.1.1/24", "10.0.0.1/33", "10.0.0.1/24 vlab.x=1",
              "::1/64", "127.0.0.1/8", "224.0.0.1/4", "0.0.0.0/8", "10.0.0.1/24\n", ""]:
    add("nics.ip", f"Nic.ip={value!r}", lambda c, v=value: Nic(ip=v))
for value in ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00", "52:54:00:12:34", "zz:54:00:12:34:56",
              5, "52:54:00:12:34:56,x", "52-54-00-12-34-56", ""]:
    add("nics.mac", f"Nic.mac={value!r}", lambda c, v=value: Nic(mac=v))
for value in ["yes", 1, None]:
    add("nics.outbound", f"Nic.outbound={value!r}", lambda c, v=value: Nic(outbound=v))
add("nics.outbound", "outbound on a bridge", lambda c: Nic(mode="bridge", bridge="lab", outbound=True))
for value in [5, [(1,)], [(1, 2, 3)], "22:22", [(1, 2)] * 17, [None]]:
    add("nics.forwards", f"Nic.forwards={value!r:.20}", lambda c, v=value: Nic(forwards=v))
for value in [[(70000, 22)], [(-1, 22)], [("a", 1)], [(22, 0)], [(22, True)]]:
    add("nics.forwards.host_port" if value[0][0] != 22 else "nics.forwards.guest_port",
        f"Nic.forwards={value!r}", lambda c, v=value: Nic(forwards=v))
add("nics.forwards", "forwards on a bridge", lambda c: Nic(mode="bridge", bridge="lab", forwards=((1, 2),)))

# -- vm.conf ----------------------------------------------------------------------------------------------
for text, field in [('mem = "x"', "mem"), ('name = "a,b"', "name"), ('kernel = "/nonexistent"', "kernel"),
                    ('cpu = "max"', "cpu"), ('balloon = "maybe"', "balloon"), ('appended = "a\0b"', "append"),
                    ("mem = 1\n" * 2, "mem"), ('vcpus = "1e3"', "vcpus"), ("x" * 100_001 + "=", "conf")]:
    add(field, f"conf {text!r:.30}", lambda c, t=text: VMConfig.from_conf(t, kernel=c.kernel, initrd=c.initrd)
        if "kernel" not in t else VMConfig.from_conf(t, initrd=c.initrd))
for source in [HUGE, "/nonexistent/vm.conf", "x\0y", 5, None, b"mem=1"]:
    add("conf", f"conf source={source!r:.30}", lambda c, s=source: VMConfig.from_conf(s))
add("conf", "conf is a directory", lambda c: VMConfig.from_conf(c.directory))
add("conf", "conf is a symlink", lambda c: VMConfig.from_conf(c.symlink))

# -- VM methods (never started: validation comes first) ---------------------------------------------------
BAD_TIMEOUTS: list[Any] = [float("inf"), float("nan"), 0, -1, "5", None, True]
add("config", "VM(5)", lambda c: VM(5))  # type: ignore[arg-type]
add("config", "VM('vm.conf')", lambda c: VM("vm.conf"))  # type: ignore[arg-type]
for t in BAD_TIMEOUTS:
    add("timeout", f"start(timeout={t!r})", lambda c, t=t: c.vm().start(timeout=t))
    add("timeout", f"stop(timeout={t!r})", lambda c, t=t: c.vm().stop(timeout=t))
    add("timeout", f"qmp(timeout={t!r})", lambda c, t=t: c.vm().qmp("query-status", timeout=t))
    add("timeout", f"aqmp(timeout={t!r})", lambda c, t=t: asyncio.run(c.vm().aqmp("query-status", timeout=t)))
    add("timeout", f"status(timeout={t!r})", lambda c, t=t: c.vm().status(timeout=t))
    add("timeout", f"snapshot_save(timeout={t!r})", lambda c, t=t: c.vm().snapshot_save("a", timeout=t))
    add("timeout", f"balloon(timeout={t!r})", lambda c, t=t: c.vm().balloon(64, timeout=t))
    add("timeout", f"wait_event(timeout={t!r})", lambda c, t=t: c.vm().wait_event("STOP", timeout=t))
for t in (float("inf"), -1):
    for method in ("pause", "resume", "vcpus", "memory", "host_sample", "snapshots"):
        add("timeout", f"{method}(timeout={t!r})", lambda c, m=method, t=t: getattr(c.vm(), m)(timeout=t))
    add("timeout", f"migrate_to(timeout={t!r})", lambda c, t=t: c.vm().migrate_to(c.vm(), timeout=t))
    add("timeout", f"iter_events(timeout={t!r})", lambda c, t=t: next(c.vm().iter_events(timeout=t)))
for value in [-1, "x", 100, 1.5]:
    add("retries", f"start(retries={value!r})", lambda c, v=value: c.vm().start(retries=v))
add("wait_ready", "start(wait_ready='no')", lambda c: c.vm().start(wait_ready="no"))
add("progress", "start(progress=1)", lambda c: c.vm().start(progress=1))
add("graceful", "stop(graceful='no')", lambda c: c.vm().stop(graceful="no"))
for command in [5, "", "a b", "query-status\n", "x,y", "{}", None, "-x"]:
    add("command", f"qmp({command!r})", lambda c, v=command: c.vm().qmp(v))
    add("command", f"aqmp({command!r})", lambda c, v=command: asyncio.run(c.vm().aqmp(v)))
add("arguments", "qmp(arguments=5)", lambda c: c.vm().qmp("x", 5))
add("arguments", "qmp(arguments=[1])", lambda c: c.vm().qmp("x", [1]))
for value in ["no", True, -5, None, [], "1T", "99999M", 10**30, "x" * 100]:
    add("balloon target", f"balloon({value!r:.20})", lambda c, v=value: c.vm().balloon(v))
add("wait", "balloon(wait='no')", lambda c: c.vm().balloon(64, wait="no"))
for tag in ["", " ", "a b", 5, None, "x" * 100, "a,b", "a\nb", "-x", "ü"]:
    for method in ("snapshot_save", "snapshot_load", "snapshot_delete"):
        add("snapshot", f"{method}({tag!r:.20})", lambda c, m=method, t=tag: getattr(c.vm(), m)(t))
for other in ["host", 5, None, "tcp:1.2.3.4:4444"]:
    add("other", f"migrate_to({other!r})", lambda c, o=other: c.vm().migrate_to(o))
add("other", "migrate_to(itself)", lambda c: (lambda v: v.migrate_to(v))(c.vm()))
for key, value in [("downtime_limit_ms", -1), ("downtime_limit_ms", "x"), ("bandwidth", 0), ("bandwidth", "fast"),
                   ("progress", "no")]:
    add(key, f"migrate_to({key}={value!r})", lambda c, k=key, v=value: c.vm().migrate_to(c.vm(), **{k: v}))
for name in [5, "", "a b", "X" * 200, None]:
    add("event", f"wait_event({name!r:.20})", lambda c, n=name: c.vm().wait_event(n))
for since in [-1, "x", None, 1.5]:
    add("since", f"events(since={since!r})", lambda c, s=since: c.vm().events(s))
    add("since", f"wait_event(since={since!r})", lambda c, s=since: c.vm().wait_event("STOP", since=s))


@pytest.fixture
def leaves_nothing() -> Iterator[None]:
    """No workdir of this process and no QEMU child may appear because of a refused input."""
    def ours() -> set[str]:
        return {p.name for p in runtime_dir().glob(f"vm{os.getpid()}-*")}

    def qemus() -> set[int]:
        return {pid for pid in procfs.descendants(os.getpid())
                if "qemu" in " ".join((procfs.cmdline(pid) or [""])[:1])}

    before_dirs, before_qemus = ours(), qemus()
    yield
    assert ours() == before_dirs and qemus() == before_qemus


@pytest.mark.parametrize(("field", "label", "call"), CASES, ids=[label for _, label, _ in CASES])
def test_bad_input_is_refused_with_field_value_problem_and_fix(
        ctx: Ctx, leaves_nothing: None, field: str, label: str, call: Callable[[Ctx], Any]) -> None:
    with pytest.raises(VlabError) as caught:
        call(ctx)
    error = caught.value
    assert not isinstance(error, StateError), f"{label}: validated only after the state check"
    assert error.field == field, f"{label}: field {error.field!r} ({error})"
    assert error.problem and error.fix, label
    assert len(str(error)) < 2000, f"{label}: the message quotes too much"
    assert "\0" not in str(error)


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 150


CONSOLE_CASES: list[tuple[str, Callable[[VM], Any]]] = [
    ("command", lambda vm: vm.console.run(5)),  # type: ignore[arg-type]
    ("command", lambda vm: vm.console.run(None)),  # type: ignore[arg-type]
    ("command", lambda vm: vm.console.run("x" * 5000)),
    ("command", lambda vm: vm.console.run("echo \x04")),
    # an open quote would leave the guest's shell waiting for a continuation line until the timeout
    ("command", lambda vm: vm.console.run("printf %s 'it's' | cat", timeout=60)),
    ("command", lambda vm: vm.console.run('echo "unclosed', timeout=60)),
    ("timeout", lambda vm: vm.console.run("true", timeout=float("inf"))),
    ("timeout", lambda vm: vm.console.run("true", timeout=0)),
    ("max_output", lambda vm: vm.console.run("true", max_output=0)),
    ("max_output", lambda vm: vm.console.run("true", max_output="1M")),  # type: ignore[arg-type]
    ("text", lambda vm: vm.console.send(5)),  # type: ignore[arg-type]
    ("timeout", lambda vm: vm.console.send("", timeout=-1)),
    ("lines", lambda vm: vm.console_tail(0)),
    ("lines", lambda vm: vm.console_tail("x")),  # type: ignore[arg-type]
]


@pytest.mark.slow
def test_bad_console_inputs_are_refused_and_the_console_still_works(shared_vm: VM) -> None:
    for field, call in CONSOLE_CASES:
        with pytest.raises(VlabError) as caught:
            call(shared_vm)
        assert caught.value.field == field and caught.value.fix
    assert shared_vm.console.run("echo still-fine").output == "still-fine\n"
    # quotes the shell accepts are not refused: escaped, nested in the other kind, inside a comment
    assert shared_vm.console.run("""echo "it's" \\' 'a"b' # don't""").output == "it's ' a\"b\n"
