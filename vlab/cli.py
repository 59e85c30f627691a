"""The ``vlab`` command line.

Each subsystem owns its sub-commands: a module listed in :data:`COMMAND_MODULES`
exposes ``register(subparsers)``, which adds its parsers and sets ``func`` on
them (``func(args) -> int`` is the exit status). Modules are imported only when
the command line is built, so ``import vlab`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vlab.errors import VlabError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: Modules that contribute sub-commands, in the order ``vlab --help`` lists them.
COMMAND_MODULES = [
    "vlab.doctor",
    "vlab.images.cli",
    "vlab.tour",
    "vlab.qemu.cli",
    "vlab.toyvmm.cli",
    "vlab.grading.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlab",
        description="vlab: learn OS virtualization by doing it (QEMU over QMP, a toy VMM on Unicorn, graded labs).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except VlabError as exc:
        print(f"vlab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
