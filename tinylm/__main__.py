"""`python -m tinylm` runs the command line (see cli.py)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: one line, no traceback
    print("interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
