"""``python -m vlab`` is the ``vlab`` command."""

import sys

from vlab.cli import main

sys.exit(main())
