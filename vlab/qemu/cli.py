"""``vlab vm …``: boot a guest from a vm.conf and run one command, or print the QEMU command line.

* ``vlab vm run [--conf vm.conf] [--kernel K] [--initrd I] [--timeout S] -- CMD…`` boots the guest
  (the built default guest without ``--conf``), runs ``CMD`` in its shell, prints the output, stops
  the VM and exits with the command's status.
* ``vlab vm argv [--conf vm.conf] …`` prints the exact QEMU command line for that configuration.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from vlab.errors import VlabError
from vlab.qemu.config import VMConfig

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``vlab vm`` and its sub-commands to the ``vlab`` command line."""
    vm = subparsers.add_parser("vm", help="boot real QEMU guests (vm.conf in, command output out)")
    commands = vm.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")
    vm.set_defaults(func=lambda _args: _help(vm))

    run = commands.add_parser("run", help="boot the guest, run one shell command in it, stop it")
    _add_config_options(run)
    run.add_argument("--timeout", type=float, default=60.0, help="seconds for boot and for the command")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the guest command (after --)")
    run.set_defaults(func=_run)

    argv = commands.add_parser("argv", help="print the QEMU command line for a configuration")
    _add_config_options(argv)
    argv.set_defaults(func=_argv)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf", help="a vm.conf file (default: the built vlab guest)")
    parser.add_argument("--kernel", help="override the kernel path")
    parser.add_argument("--initrd", help="override the initrd path")
    parser.add_argument("--accel", choices=["auto", "tcg", "kvm"], help="override the accelerator")


def _config(args: argparse.Namespace) -> VMConfig:
    overrides = {key: getattr(args, key) for key in ("kernel", "initrd", "accel") if getattr(args, key)}
    if args.conf:
        return VMConfig.from_conf(args.conf, **overrides)
    return VMConfig(**overrides)


def _run(args: argparse.Namespace) -> int:
    from vlab.qemu.vm import VM

    words = [w for w in args.command if w != "--"] if args.command[:1] == ["--"] else list(args.command)
    if not words:
        raise VlabError("no command given", field="command", fix="vlab vm run -- uname -a")
    vm = VM(_config(args))
    try:
        vm.start(timeout=args.timeout)
        # in a child shell, so `exit 3` gives status 3 instead of ending the guest's console shell
        command = shlex.join(words) if len(words) > 1 else words[0]
        result = vm.console.run(f"sh -c {shlex.quote(command)}", timeout=args.timeout)
    finally:
        vm.stop()
    sys.stdout.write(result.output if result.output.endswith("\n") or not result.output else result.output + "\n")
    return result.status


def _argv(args: argparse.Namespace) -> int:
    print(_config(args).shell_command())
    return 0
