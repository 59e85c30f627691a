"""``vlab tour``: the headless main job — boot the default guest, run ``uptime`` in it, power it off.

It is what ``./setup.sh --headless`` runs in terminals and CI: the shortest
path that shows every layer works (images, accelerator choice, QEMU, QMP, the
serial console, a clean stop).
"""

from __future__ import annotations

import argparse
import time

__all__ = ["run_tour", "register"]


def run_tour(command: str = "uptime") -> int:
    """Boot the default guest, run ``command`` on its console, print what happened, stop it."""
    from vlab.qemu import VM, VMConfig

    config = VMConfig()
    print("QEMU command line:\n  " + " ".join(config.qemu_argv()))
    started = time.monotonic()
    with VM(config).start(progress=True) as vm:
        print(f"guest ready in {time.monotonic() - started:.2f} s ({vm.accel})")
        result = vm.console.run(command)
        print(f"$ {command}\n{result.output.rstrip()}\n(exit status {result.status})")
        print(f"QMP status: {vm.status()}")
    print(f"guest stopped; tour done in {time.monotonic() - started:.2f} s")
    return 0 if result.status == 0 else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("tour", help="boot the default guest, run a command in it, power it off")
    parser.add_argument("command", nargs="?", default="uptime", help="command to run in the guest (default: uptime)")
    parser.set_defaults(func=lambda args: run_tour(args.command))
