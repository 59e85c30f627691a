"""Running a VM from a QEMU command line someone wrote (lab 01's ``conf_to_argv``), safely.

:meth:`vlab.VM.from_argv` runs *those* words, through vlab's process handling (dies with its owner, swept if
orphaned, stopped at exit) and with vlab's own plumbing added: the console and QMP on sockets vlab holds, a raw
QMP socket for the student's own commands (:class:`RawQMP`), the NICs vlab was asked for, ``-nodefaults
-no-user-config -no-reboot -display none``. :func:`parse_argv` validates the argv first and refuses, with a
:class:`~vlab.errors.VlabError` naming the word and why, anything that would break isolation or hang:

* options outside a small allow-list (``-kernel -initrd -append -m -smp -name -accel -enable-kvm -M/-machine
  -cpu -nographic -nodefaults -no-user-config -no-reboot -display none``): disks, devices, network backends,
  chardevs and monitors, ``-daemonize`` (QEMU would leave vlab's process handling), ``-S`` and ``-incoming``
  (the guest would wait forever), …;
* a missing ``-kernel`` or ``-initrd`` (the BIOS would look for a boot disk forever; the kernel would find no
  root file system), an ``-append`` without ``console=ttyS0`` (vlab would never see the guest boot);
* values vlab's :class:`~vlab.qemu.config.VMConfig` refuses (sizes, vCPU counts, files, command-line length).

vlab adds ``panic=-1`` when ``-append`` has no ``panic=`` word: a guest that panics then exits at once (with
``-no-reboot``) and the boot fails with the console tail instead of waiting for the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab.errors import VlabError
from vlab.qemu.config import BASE_FLAGS, QEMU_BINARY, LaunchIO, Nic, VMConfig, parse_size_mib
from vlab.qemu.fields import check_text, shown

__all__ = ["ParsedArgv", "RawQMP", "parse_argv", "ALLOWED_OPTIONS"]

#: argv[0] names accepted (vlab always runs its own ``qemu-system-x86_64``; ``kvm`` is Debian's wrapper for it)
_PROGRAMS = (QEMU_BINARY, "kvm")
#: options with a value, and what each must look like
_VALUED = ("-kernel", "-initrd", "-append", "-m", "-smp", "-name", "-accel", "-M", "-machine", "-cpu", "-display")
#: options without a value
_FLAGS = ("-nographic", "-nodefaults", "-no-user-config", "-no-reboot", "-enable-kvm")
ALLOWED_OPTIONS = _VALUED + _FLAGS
_MAX_WORDS = 64
_MAX_WORD = 4096 + 64
_FIX = ('e.g. ["qemu-system-x86_64", "-kernel", KERNEL, "-initrd", INITRD, "-append", "console=ttyS0", '
        '"-m", "256", "-smp", "1"]')
#: why an option outside the allow-list is refused (the rest get the generic reason)
_REFUSED = {
    "-daemonize": "QEMU would detach from vlab's process handling and could outlive the notebook",
    "-S": "QEMU would start with the vCPUs stopped: the guest would never boot",
    "-incoming": "QEMU would wait for a migration stream forever instead of booting",
    "-loadvm": "this VM has no disk holding snapshots",
    "-serial": "vlab attaches the guest's ttyS0 to its own socket (that is how it sees the guest boot)",
    "-monitor": "vlab attaches QMP to its own sockets (vm.raw_qmp() gives you one)",
    "-qmp": "vlab attaches QMP to its own sockets (vm.raw_qmp() gives you one)",
    "-mon": "vlab attaches QMP to its own sockets (vm.raw_qmp() gives you one)",
    "-chardev": "a host-side channel could open any file or connection: vlab makes the ones the VM needs",
    "-netdev": "a network backend could reach outside the VM's isolated network: pass nics= to VM.from_argv",
    "-net": "a network backend could reach outside the VM's isolated network: pass nics= to VM.from_argv",
    "-nic": "a network backend could reach outside the VM's isolated network: pass nics= to VM.from_argv",
    "-drive": "this lab's VM has no disk (and a path there hands QEMU a host file)",
    "-hda": "this lab's VM has no disk (and a path there hands QEMU a host file)",
    "-blockdev": "this lab's VM has no disk (and a path there hands QEMU a host file)",
}


@dataclass(frozen=True)
class ParsedArgv:
    """A QEMU command line vlab agreed to run.

    :ivar argv: the words as given (argv[0] included).
    :ivar config: what they describe, validated as a :class:`VMConfig` (kernel, initrd, append, mem, vcpus,
        accel, machine, cpu, name, plus the NICs vlab adds).
    :ivar options: the options that will run, in the given order, each as (option, value or None); ``-name``,
        ``-accel``/``-enable-kvm``, ``-nographic`` and ``-display`` are left to vlab (see :meth:`launch_argv`).
    """

    argv: tuple[str, ...]
    config: VMConfig
    options: tuple[tuple[str, str | None], ...]

    def launch_argv(self, io: LaunchIO, accel: str) -> list[str]:
        """The command vlab runs: these options (``-m`` in MiB, ``-append`` with vlab's words), then vlab's plumbing."""
        config = self.config
        argv = [QEMU_BINARY, "-name", f"{config.name},debug-threads=on", "-accel", accel]
        for option, value in self.options:
            if option == "-append":
                value = kernel_cmdline(config)
            elif option == "-m":
                value = str(config.mem)
            argv += [option] if value is None else [option, value]
        argv += list(BASE_FLAGS)
        argv += VMConfig.io_args(io)
        for device, spec in config.device_options(io):
            argv += [device, json.dumps(spec, separators=(",", ":"))]
        return argv


def kernel_cmdline(config: VMConfig) -> str:
    """The student's ``-append`` plus vlab's words (hostname, NIC addresses) and ``panic=-1`` if no ``panic=``."""
    line = config.kernel_cmdline()
    return line if any(word.startswith("panic=") for word in line.split()) else line + " panic=-1"


def _refuse(word: str, problem: str, fix: str = _FIX) -> VlabError:
    return VlabError(problem, field="argv", value=shown(word), fix=fix)


def _words(argv: Any) -> tuple[str, ...]:
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence):
        raise VlabError(f"an argv is a list of strings, one per word, not {type(argv).__name__}", field="argv",
                        value=shown(argv), fix=f"{_FIX} (use shlex.split for a string)")
    if not 1 <= len(argv) <= _MAX_WORDS:
        raise VlabError(f"an argv has 1 to {_MAX_WORDS} words, not {len(argv)}", field="argv", value=len(argv),
                        fix=_FIX)
    for word in argv:
        if not isinstance(word, str):
            raise VlabError(f"every word of an argv is a str, not {type(word).__name__}", field="argv",
                            value=shown(word), fix=f"{_FIX} (str(n) for numbers)")
        check_text("argv", word, max_len=_MAX_WORD, fix=_FIX, allow_empty=True)
    return tuple(argv)


def parse_argv(argv: Sequence[str], *, name: str | None = None, nics: Sequence[Nic] = ()) -> ParsedArgv:
    """Validate a QEMU command line for :meth:`vlab.VM.from_argv`.

    :param name: the VM's name (default: the argv's ``-name``, else ``vlab``).
    :param nics: NICs vlab adds (its own JSON ``-netdev``/``-device`` options; an argv may not have any).
    :raises VlabError: naming the word and why, for anything not a list of strings, an option outside
        :data:`ALLOWED_OPTIONS`, a missing or repeated option, or a value :class:`VMConfig` refuses.
    """
    words = _words(argv)
    if os.path.basename(words[0]) not in _PROGRAMS:
        raise _refuse(words[0], f"argv[0] must be the emulator, {QEMU_BINARY} (or kvm): vlab runs its own "
                                f"{QEMU_BINARY}, never another program")
    options: list[tuple[str, str | None]] = []
    values: dict[str, str | None] = {}
    index = 1
    while index < len(words):
        word = words[index]
        if word in _FLAGS:
            value: str | None = None
        elif word in _VALUED:
            if index + 1 >= len(words):
                raise _refuse(word, f"{word} needs a value after it", fix=f"{word} VALUE")
            index += 1
            value = words[index]
        elif word.split()[:1] and word.split()[0] in ALLOWED_OPTIONS:
            raise _refuse(word, "one word per list item: an option and its value are two items, not one",
                          fix=f"{word.split()[0]!r}, {' '.join(word.split()[1:])!r}")
        elif word.startswith("-"):
            why = _REFUSED.get(word, "vlab runs only what a lab's VM needs; it attaches the console, QMP and "
                                     "NICs itself")
            raise _refuse(word, f"{word} is not allowed: {why}",
                          fix=f"use only {' '.join(ALLOWED_OPTIONS)}")
        else:
            raise _refuse(word, "a word that is not an option, nor the value of the option before it (one "
                                "word per list item: an option and its value are two items)", fix=_FIX)
        key = "-M" if word == "-machine" else "-accel" if word == "-enable-kvm" else word
        if key in values:
            raise _refuse(word, f"{word} is given twice (QEMU would silently keep one)", fix="give it once")
        values[key] = "kvm" if word == "-enable-kvm" else value
        options.append((word, value))
        index += 1
    config = _config(values, name, nics)
    kept = tuple((o, v) for o, v in options if o not in ("-name", "-accel", "-enable-kvm", "-nographic",
                                                            "-display", "-nodefaults", "-no-user-config",
                                                            "-no-reboot"))
    return ParsedArgv(words, config, kept)


def _config(values: Mapping[str, str | None], name: str | None, nics: Sequence[Nic]) -> VMConfig:
    for required, why in (("-kernel", "without it QEMU's BIOS looks for a boot disk, and there is none"),
                          ("-initrd", "without it the kernel finds no root file system and panics"),
                          ("-append", "the kernel needs console=ttyS0 to print on the serial port vlab reads")):
        if required not in values:
            raise VlabError(f"{required} is missing: {why}", field="argv", value=None, fix=_FIX)
    append = str(values["-append"])
    if not any(word.startswith("console=ttyS0") for word in append.split()):
        raise VlabError("-append has no console=ttyS0: the guest's console would go to a screen that does not "
                        "exist, and vlab would never see it boot", field="argv", value=shown(append),
                        fix="add console=ttyS0 to -append")
    display = values.get("-display")
    if "-display" in values and display != "none":
        raise _refuse(str(display), "-display may only be none: the VM has no screen", fix="-display none")
    fields: dict[str, Any] = {"kernel": values["-kernel"], "initrd": values["-initrd"], "append": append,
                              "nics": tuple(nics), "balloon": False, "cold_boot": True}
    if "-m" in values:
        size = str(values["-m"])
        fields["mem"] = parse_size_mib(size.removeprefix("size="), field_name="-m")
    if "-smp" in values:
        smp = str(values["-smp"])
        if not re.fullmatch(r"(cpus=)?\d{1,4}", smp):
            raise _refuse(smp, "-smp must be a number of vCPUs (optionally cpus=N), without topology options",
                          fix='"-smp", "1"')
        fields["vcpus"] = int(smp.removeprefix("cpus="))
    accel = values.get("-accel")
    if accel is not None:
        if accel not in ("tcg", "kvm"):
            raise _refuse(accel, "-accel must be tcg or kvm, without options", fix='"-accel", "tcg" (or leave it '
                                                                                   'out: vlab picks)')
        fields["accel"] = accel
    # the classic PC, as QEMU runs it without -M: lab 01 teaches that boot (VMConfig's "auto" and "microvm"
    # are vlab's own choices, not QEMU machine names a student's argv may use)
    machine = values.get("-M") or "pc"
    if machine not in ("pc", "q35"):
        raise _refuse(machine, "-M must be pc or q35 here", fix='"-M", "pc" (or leave it out)')
    fields["machine"] = machine
    if values.get("-cpu") is not None:
        fields["cpu"] = values["-cpu"]
    argv_name = values.get("-name")
    if argv_name is not None:
        argv_name = argv_name.removeprefix("guest=").removesuffix(",debug-threads=on")
    fields["name"] = name if name is not None else argv_name or "vlab"
    try:
        return VMConfig(**fields)
    except VlabError as exc:  # name the option the student wrote, not VMConfig's field
        option = {"kernel": "-kernel", "initrd": "-initrd", "append": "-append", "mem": "-m", "vcpus": "-smp",
                  "machine": "-M", "cpu": "-cpu", "name": "-name", "accel": "-accel"}.get(exc.field or "")
        if option is None:
            raise
        raise VlabError(f"{option}: {exc.problem}", field="argv", value=exc.value, fix=exc.fix,
                        detail=exc.detail) from None


# ---------------------------------------------------------------- raw QMP


class RawQMP:
    """A raw QMP connection to a VM's spare monitor: vlab frames the JSON, the caller speaks the protocol.

    QEMU greets every new connection (:attr:`greeting`) and accepts nothing but ``qmp_capabilities`` until
    the caller sends it. :meth:`send` writes one JSON object and returns the next reply, skipping the events
    QEMU sends meanwhile (kept in :attr:`events`). Everything sent is kept in :attr:`sent`.

    :param path: the monitor's UNIX socket (in the VM's private workdir, or any ``-qmp unix:`` socket).
    :param describe_failure: why QEMU may have gone (exit status and stderr), for error messages.
    :param timeout: seconds to wait for the greeting, and for each reply.
    """

    _MAX_LINE = 1 << 20
    _MAX_EVENTS = 1000

    def __init__(self, path: Path, describe_failure: Callable[[], str] | None = None, timeout: float = 5.0) -> None:
        self._describe_failure = describe_failure or (lambda: "")
        self.timeout = timeout
        self.sent: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
            greeting = self._read(time.monotonic() + timeout, "the greeting")
        except BaseException:
            self.close()
            raise
        #: QEMU's first message: ``{"QMP": {"version": …, "capabilities": […]}}``
        self.greeting: dict[str, Any] = greeting

    def send(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send one JSON object (e.g. ``{"execute": "query-status"}``); return QEMU's next reply as a dict.

        The reply is returned as QEMU sent it: ``{"return": …}`` or ``{"error": {"class": …, "desc": …}}``.

        :raises VlabError: if ``message`` is not a JSON object, the connection is closed, QEMU is gone, or
            no reply comes within :attr:`timeout` seconds.
        """
        if not isinstance(message, Mapping):
            raise VlabError(f"send one JSON object (a dict), not {type(message).__name__}", field="message",
                            value=shown(message), fix='send({"execute": "COMMAND"})')
        try:
            data = json.dumps(dict(message), allow_nan=False).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise VlabError(f"cannot be sent as JSON ({exc})", field="message", value=shown(message),
                            fix="use str, int, float, bool, None, lists and dicts only") from None
        if len(data) > 64 * 1024:
            raise VlabError("a QMP command is a short JSON object", field="message", value=len(data),
                            fix="send one command at a time")
        if self._sock is None:
            raise VlabError("this QMP connection is closed", field="message", value=shown(message),
                            fix="open a new one: vm.raw_qmp()")
        self.sent.append(json.loads(data))
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc) from None
        return self._read(time.monotonic() + self.timeout, f"the reply to {shown(dict(message))}")

    def _read(self, deadline: float, what: str) -> dict[str, Any]:
        while True:
            line = self._readline(deadline, what)
            try:
                message = json.loads(line)
            except ValueError:
                raise VlabError("QEMU sent a line that is not JSON", field="qmp", value=shown(line),
                                fix="this is a bug in QEMU or vlab: stop the VM") from None
            if isinstance(message, dict) and "event" in message:
                if len(self.events) < self._MAX_EVENTS:
                    self.events.append(message)
                continue
            if not isinstance(message, dict):
                raise VlabError("QEMU sent a QMP message that is not an object", field="qmp", value=shown(line))
            return message

    def _readline(self, deadline: float, what: str) -> bytes:
        sock = self._sock
        if sock is None:
            raise VlabError("this QMP connection is closed", field="qmp", fix="open a new one: vm.raw_qmp()")
        while (end := self._buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VlabError(f"QEMU sent no {what} within {self.timeout:g} s", field="qmp", value=self.timeout,
                                fix="is another raw QMP connection to this VM still open? close it; or QEMU "
                                    "is stuck: stop the VM")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise self._lost(exc) from None
            if not chunk:
                raise self._lost(EOFError("QEMU closed the monitor"))
            self._buffer += chunk
            if len(self._buffer) > self._MAX_LINE:
                raise VlabError("QEMU sent an over-long QMP message", field="qmp", value=len(self._buffer))
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line

    def _lost(self, exc: BaseException) -> VlabError:
        self.close()
        return VlabError(f"lost QEMU ({type(exc).__name__}: {exc})", field="qmp",
                         fix="see why QEMU stopped below", detail=self._describe_failure())

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> RawQMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
