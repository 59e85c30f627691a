"""Guest images built from Debian packages (see :mod:`vlab.images.build`).

:func:`default_kernel` and :func:`default_initrd` are what ``VMConfig()`` boots; :func:`minimal_kernel` and
:func:`minimal_initrd` are the optional minimal flavour (``vlab images build --kernel minimal``).
"""

from __future__ import annotations

from pathlib import Path

from vlab.images.build import (
    INITRD_NAME,
    KERNEL_NAME,
    MINIMAL_INITRD_NAME,
    BuildResult,
    build_images,
    flavour_dir,
    require_image,
)
from vlab.images.manifest import Manifest

__all__ = [
    "BuildResult",
    "Manifest",
    "build_images",
    "default_initrd",
    "default_kernel",
    "flavour_dir",
    "minimal_initrd",
    "minimal_kernel",
]


def default_kernel() -> Path:
    """The built guest kernel (``vmlinuz``); VlabError if ``vlab images build`` has not run."""
    return require_image(KERNEL_NAME)


def default_initrd() -> Path:
    """The built busybox initramfs; VlabError if ``vlab images build`` has not run."""
    return require_image(INITRD_NAME)



def minimal_kernel() -> Path:
    """The minimal flavour's kernel (its ``vmlinux`` PVH ELF beside it is what ``-M microvm`` enters);
    VlabError naming ``vlab images build --kernel minimal`` when it has not been built."""
    return require_image(KERNEL_NAME, kernel="minimal")


def minimal_initrd() -> Path:
    """The minimal flavour's initramfs (no kernel modules, LZ4); VlabError when it has not been built."""
    return require_image(MINIMAL_INITRD_NAME, kernel="minimal")
