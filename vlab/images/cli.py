"""``vlab images build | verify | path``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlab.images.build import BUILD_STEPS, FLAVOURS, build_images
from vlab.images.manifest import Manifest
from vlab.paths import images_dir
from vlab.progress import steps

__all__ = ["register"]


def _build(args: argparse.Namespace) -> int:
    # the minimal flavour reports a variable number of steps (cache hit or unpack/configure/compile): no total
    total = BUILD_STEPS if args.kernel == "stock" else None
    with steps(total, "vlab images build") as step:  # a bar on a terminal, one line per step in logs
        result = build_images(args.dir, force=args.force, report=step, kernel=args.kernel)
    for entry in result.manifest.files.values():
        print(f"  {entry.name:32} {entry.size:>10} B  sha256 {entry.sha256[:16]}…")
    if args.kernel == "minimal":
        where = result.directory
        print(f"  boot it: VMConfig(kernel='{where}/vmlinuz', initrd='{where}/initramfs.cpio.lz4') "
              "(vlab.images.minimal_kernel(), minimal_initrd())")
    # the snapshot template is the default guest's (stock kernel) only
    if args.dir is None and not args.no_template and args.kernel == "stock":
        _template(args)  # an optimisation: a failure is reported, and VMs then boot cold
    return 0


def _template(args: argparse.Namespace) -> int:
    """Build (or find) the snapshot template of the default guest, so the first ``vlab.VM()`` is fast too."""
    from vlab.errors import VlabError
    from vlab.qemu import VM, template

    vm = VM()
    try:
        found, note = template.ensure(vm.config, vm.accel.kind)
    except VlabError as exc:
        print(f"snapshot template: not built ({exc.problem}); VMs will boot cold")
        return 1
    form = "shared RAM" if found.shared else "copy"
    print(f"snapshot template ({form}): {note or 'up to date'} in {found.directory}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    """Remove the snapshot templates that can never be restored again (their kernel or initramfs changed)."""
    from vlab.qemu import template

    root = template.templates_dir()
    removed = template.prune(root)
    for directory in removed:
        print(f"  removed {directory}")
    print(f"images prune: {len(removed)} template{'' if len(removed) == 1 else 's'} removed from {root}")
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
    build.add_argument("--dir", type=Path, default=None,
                       help="image directory (default: $VLAB_IMAGES, or its minimal/ for --kernel minimal)")
    build.add_argument("--kernel", choices=FLAVOURS, default="stock",
                       help="stock: Debian's cloud kernel (default image); minimal: compiled from linux-source-6.1 "
                            "for sub-second cold boots (optional: ~5 min once on 2 cores, then cached; see "
                            "vm-images/README.md)")
    build.add_argument("--no-template", action="store_true",
                       help="don't build the default guest's snapshot template (VMs then build it on first use)")
    build.set_defaults(func=_build)
    tmpl = sub.add_parser("template", help="build the default guest's snapshot template (no-op if up to date)")
    tmpl.set_defaults(func=_template)
    prune = sub.add_parser("prune", help="remove snapshot templates of older images (building one does it too)")
    prune.set_defaults(func=_prune)
    verify = sub.add_parser("verify", help="check the built files against the manifest's checksums")
    verify.add_argument("--dir", type=Path, default=None)
    verify.set_defaults(func=_verify)
    path = sub.add_parser("path", help="print the image directory")
    path.set_defaults(func=lambda args: print(images_dir()) or 0)
