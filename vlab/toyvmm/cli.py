"""``vlab toyvmm``: run guest programs on the toy VMM from the shell."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("toyvmm", help="run guest programs on the toy trap-and-emulate VMM")
    sub = parser.add_subparsers(dest="toyvmm_command", metavar="ACTION")
    run = sub.add_parser("run", help="run PROGRAM in N guests and print UART output and exit counts")
    run.add_argument("program", help="hello, compute, memdirty, hypercalls, sleeper, attacker")
    run.add_argument("--guests", type=int, default=1)
    run.add_argument("--vcpus", type=int, default=1)
    run.add_argument("--scheduler", default="round-robin", help="round-robin, credit, lottery")
    run.add_argument("--paging", default="shadow", help="shadow or nested")
    run.add_argument("--ms", type=float, default=100.0, help="virtual milliseconds to run (at most)")
    run.add_argument("--log", action="store_true", help="print every exit (the audit log)")
    run.set_defaults(func=_run)
    listing = sub.add_parser("list", help="list the guest programs")
    listing.set_defaults(func=_list)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _list(args: argparse.Namespace) -> int:
    from vlab.toyvmm.programs import PROGRAMS

    for name, what in PROGRAMS.items():
        print(f"{name:<11} {what}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from vlab.toyvmm.machine import Machine

    with Machine(scheduler=args.scheduler, paging=args.paging, log=args.log) as machine:
        for _ in range(args.guests):
            machine.add_guest(args.program, vcpus=args.vcpus)
        trace = machine.run(ms=args.ms)
        for record in machine.log:
            print(record)
        for guest in machine.guests:
            print(f"== {guest.name} ({guest.state.value}, exit code {guest.exit_code})")
            print(guest.uart.text, end="" if guest.uart.text.endswith("\n") or not guest.uart.text else "\n")
            print(f"   exits: {guest.exits}")
        print(f"virtual time {machine.now} instructions; CPU shares {trace.shares()}")
        print(f"paging ({machine.mmu.mode.value}): {machine.paging_stats}")
        for violation in machine.violations:
            print(f"violation: {violation}")
    return 0
