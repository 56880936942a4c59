"""``python -m nemotron_sglang`` = the ``nemotron-sglang`` CLI."""

import sys

from .serving.cli import main

sys.exit(main())
