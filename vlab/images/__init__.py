"""Guest images built from Debian packages (see :mod:`vlab.images.build`).

:func:`default_kernel` and :func:`default_initrd` are what ``VMConfig()`` boots.
"""

from __future__ import annotations

from pathlib import Path

from vlab.images.build import INITRD_NAME, KERNEL_NAME, BuildResult, build_images, require_image
from vlab.images.manifest import Manifest

__all__ = [
    "BuildResult",
    "Manifest",
    "build_images",
    "default_initrd",
    "default_kernel",
]


def default_kernel() -> Path:
    """The built guest kernel (``vmlinuz``); VlabError if ``vlab images build`` has not run."""
    return require_image(KERNEL_NAME)


def default_initrd() -> Path:
    """The built busybox initramfs; VlabError if ``vlab images build`` has not run."""
    return require_image(INITRD_NAME)

