"""Logging in TinyLM's format (`YYYY-MM-DD HH:MM:SS INFO | message`) and the progress displays,
both drawn with one `bar`: training's (`Progress`: a one-line bar redrawn in place on a
terminal, plain log lines otherwise) and long reads' (`ByteBar`: bytes done, MB/s)."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("tinylm")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is written, not the stream of the
    first call: pytest's capture and notebooks swap sys.stderr, and a handler holding the old one
    wrote into a closed file once the first caller's stream was gone."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Send tinylm's log to stderr (generated text goes to stdout, so it can be piped)."""
    if getattr(setup_logging, "_done", False):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    setup_logging._done = True


def banner(title: str, fields: list[tuple[str, object]]) -> None:
    head = f"========== {title} =========="
    log.info(head)
    for k, v in fields:
        log.info("%s: %s", k, v)
    log.info("=" * len(head))


def summary(title: str, fields: list[tuple[str, object]]) -> None:
    log.info("%s:", title)
    for k, v in fields:
        log.info("- %s: %s", k, v)


def fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def bar(fraction: float, width: int) -> str:
    """'[####....]': fraction (clipped to [0, 1]) of width cells filled."""
    filled = int(width * min(max(fraction, 0.0), 1.0))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


class Progress:
    """Training progress: `update` every step is cheap; it redraws a bar on a terminal at most
    ~10 times a second, or logs a line every `interval` steps when stderr is not a terminal."""

    def __init__(self, interval: int = 10, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = max(1, interval)
        self.last_draw = 0.0
        self.mark = (time.time(), 0)  # (time, tokens) at the last update, for the throughput

    def wants(self, step: int) -> bool:
        """Whether `update` for this step will show anything (so callers can skip a host sync)."""
        return self.tty and time.time() - self.last_draw > 0.1 or step % self.interval == 0

    def update(self, step: int, loss: float, lr: float, tokens: int, progress: float, elapsed: float) -> None:
        """`tokens`: total trained so far; the rate shown is measured since the previous update
        (the caller's loss.item() has synchronised the device, so the time is real)."""
        now = time.time()
        tok_per_s = (tokens - self.mark[1]) / max(now - self.mark[0], 1e-9)
        self.mark = (now, tokens)
        eta = elapsed / progress * (1 - progress) if progress > 0 else float("nan")
        eta_s = fmt_duration(eta) if eta == eta else "?"
        text = f"step {step} | loss {loss:.4f} | lr {lr:.2e} | {tok_per_s / 1e3:.1f}k tok/s | {progress * 100:.0f}% | ETA {eta_s}"
        if self.tty:
            self.stream.write(f"\r{bar(progress, 24)} {text}\033[K")
            self.stream.flush()
            self.last_draw = time.time()
        elif step % self.interval == 0:
            log.info(text)

    def clear(self) -> None:
        if self.tty and self.last_draw:
            self.stream.write("\r\033[K")
            self.stream.flush()


class ByteBar:
    """A one-line bar on stderr (bytes done / total, MB/s), drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self.total = label, max(total, 1)
        self.t0 = self.last = time.perf_counter()
        self.done_bytes = 0

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        self.done_bytes = done
        if not self.enabled or (now - self.last < 0.1 and not force):
            return  # redraw at most 10x a second
        self.last = now
        rate = done / max(now - self.t0, 1e-9) / 1e6
        self.stream.write(f"\r{self.label} {bar(done / self.total, 30)} "
                          f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s")
        self.stream.flush()

    def close(self) -> None:
        """Draw the last state and end the line (once), also when tokenizing failed."""
        if self.enabled:
            self.update(self.done_bytes, force=True)
            self.stream.write("\n")
            self.enabled = False
