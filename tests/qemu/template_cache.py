"""A private snapshot-template cache for a test module (``VLAB_TEMPLATES``), restored and optionally removed after."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vlab.qemu import template


@contextlib.contextmanager
def private_template_cache(root: Path, *, remove: bool = True) -> Iterator[Path]:
    """Point ``VLAB_TEMPLATES`` at ``root`` (forgetting failed builds of the previous cache) until the block ends."""
    old = os.environ.get(template.TEMPLATES_ENV)
    os.environ[template.TEMPLATES_ENV] = str(root)
    template._failed_builds.clear()
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop(template.TEMPLATES_ENV, None)
        else:
            os.environ[template.TEMPLATES_ENV] = old
        if remove:
            shutil.rmtree(root, ignore_errors=True)
