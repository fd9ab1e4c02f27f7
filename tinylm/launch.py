"""The `tinylm` command's entry point: import the command line, then run it.

Importing the CLI imports PyTorch, which takes a second or more. A Ctrl-C in that second must not
land inside torch's own start-up (a KeyboardInterrupt raised in its C++ initialisation aborts the
interpreter), so SIGINT is held back while the import runs and answered after it with one line and
exit code 130, as the CLI answers one later on. main.py starts the same way.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable, TypeVar

T = TypeVar("T")
INTERRUPTED = 130


def import_deferring_sigint(load: Callable[[], T]) -> T:
    """Run `load()` (imports) with SIGINT noted instead of raised; exit 130 after it if one came."""
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except ValueError:  # not the main thread: signals cannot be handled here, nothing to defer
        return load()
    try:
        value = load()
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        interrupted()
    return value


def interrupted() -> None:
    print("interrupted", file=sys.stderr)
    sys.exit(INTERRUPTED)


def _load_cli():
    from .cli import main as cli_main  # noqa: PLC0415

    return cli_main


def main() -> int:
    try:
        cli_main = import_deferring_sigint(_load_cli)
    except KeyboardInterrupt:  # the signal came before the handler was in place
        interrupted()
    return cli_main()
