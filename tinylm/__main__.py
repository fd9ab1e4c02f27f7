"""`python -m tinylm` runs the command line (see cli.py; launch.py guards its import)."""

import sys

from .launch import main

sys.exit(main())
