"""``vlab images build | verify | path``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlab.images.build import BUILD_STEPS, build_images
from vlab.images.manifest import Manifest
from vlab.paths import images_dir
from vlab.progress import steps

__all__ = ["register"]


def _build(args: argparse.Namespace) -> int:
    with steps(BUILD_STEPS, "vlab images build") as step:  # a bar on a terminal, one line per step in logs
        result = build_images(args.dir, force=args.force, report=step)
    for entry in result.manifest.files.values():
        print(f"  {entry.name:32} {entry.size:>10} B  sha256 {entry.sha256[:16]}…")
    return 0


def _verify(args: argparse.Namespace) -> int:
    directory = args.dir or images_dir()
    manifest = Manifest.load(directory)
    if manifest is None:
        print(f"no images in {directory}: run `vlab images build`")
        return 1
    problems = manifest.problems(directory)
    for line in problems:
        print(f"  {line}")
    print("images verify: " + ("FAILED" if problems else f"ok ({len(manifest.files)} files)"))
    return 1 if problems else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    images = subparsers.add_parser("images", help="build and check the guest images")
    sub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build the guest images from Debian packages (no-op if up to date)")
    build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    build.add_argument("--dir", type=Path, default=None, help="image directory (default: $VLAB_IMAGES)")
    build.set_defaults(func=_build)
    verify = sub.add_parser("verify", help="check the built files against the manifest's checksums")
    verify.add_argument("--dir", type=Path, default=None)
    verify.set_defaults(func=_verify)
    path = sub.add_parser("path", help="print the image directory")
    path.set_defaults(func=lambda args: print(images_dir()) or 0)
