"""tinylm's log handler writes to the sys.stderr of the moment (pytest and notebooks swap it)."""

import io
import sys

from tinylm.util import log as log_module


def test_the_log_follows_sys_stderr_when_it_is_swapped(monkeypatch):
    before = list(log_module.log.handlers), log_module.log.level, log_module.log.propagate
    monkeypatch.setattr(log_module.setup_logging, "_done", False, raising=False)
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        log_module.setup_logging()
        log_module.log.info("one")
        first.close()  # the stream the handler was set up under is gone
        monkeypatch.setattr(sys, "stderr", second)
        log_module.log.info("two")  # a handler holding `first` would raise ValueError here
        assert second.getvalue().endswith(" INFO | two\n")
    finally:
        for h in log_module.log.handlers[:]:
            if h not in before[0]:
                log_module.log.removeHandler(h)
        log_module.log.setLevel(before[1])
        log_module.log.propagate = before[2]
