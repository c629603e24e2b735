"""``python -m rs_vlm_plugin``: the command line (no QGIS needed)."""

import sys

from .core.cli import main

sys.exit(main())
