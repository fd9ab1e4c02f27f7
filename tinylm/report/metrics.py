"""A training run's metrics file, NAME.metrics.jsonl beside NAME.model: its writer and reader.

One JSON object per line, appended as the run goes (flushed per row, so a killed run keeps every
row written before it died). Every row has
    "kind": "train" | "eval", "step", "tokens" (seen so far), "time" (training seconds so far);
train rows (one per --log-interval steps) add "train_loss", "lr", "grad_norm", "tokens_per_s";
eval rows (one per validation) add "val_loss", "val_ppl".
A value that is not finite (a skipped step's NaN loss) is written as null: JSON has no NaN.

The writer is handed numbers the trainer has already read from the device at a log interval; it
never touches a tensor, so it adds no host synchronisation. `--tensorboard DIR` mirrors the same
scalars into TensorBoard event files (torch.utils.tensorboard, the `tensorboard` extra).
What a run's rows mean for a plot or a model card is plot.py's and card.py's business.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..util.errors import UsageError
from ..util.files import atomic_write_bytes

SUFFIX = ".metrics.jsonl"
KINDS = ("train", "eval")
COMMON = ("kind", "step", "tokens", "time")
FIELDS = {"train": COMMON + ("train_loss", "lr", "grad_norm", "tokens_per_s"), "eval": COMMON + ("val_loss", "val_ppl")}
TENSORBOARD_HINT = "pip install 'tinylm[tensorboard]'"
MAX_LINE = 1 << 16  # a metrics row is ~200 bytes; a longer line means this is some other file


def metrics_path(model: str | os.PathLike) -> Path:
    """Where a run writing `model` keeps its metrics: models/book.model -> models/book.metrics.jsonl."""
    model = Path(model)
    return model.with_name(f"{model.stem}{SUFFIX}")


def run_metrics(model: str | os.PathLike) -> Path:
    """The metrics file of the run that saved `model`, its latest weights included:
    book.model and book.last.model -> book.metrics.jsonl."""
    model = Path(model)
    stem = model.stem[: -len(".last")] if model.stem.endswith(".last") else model.stem
    return model.with_name(f"{stem}{SUFFIX}")


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def check_tensorboard(folder: str | os.PathLike | None) -> None:
    """Fail before training when --tensorboard cannot work: the extra is missing or DIR is a file."""
    if folder is None:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415 - optional extra
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package, which is not installed; {TENSORBOARD_HINT}, "
                         "or drop --tensorboard (the metrics file is written anyway)") from None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--tensorboard {folder} is a file, not a folder; give a folder for the event files")


class MetricsWriter:
    """Appends rows to a metrics file (and, with `tensorboard`, to TensorBoard events).

    append=False starts the file afresh (a new run); append=True continues it (a resumed run),
    first dropping rows past `resume_step`: a run killed after its last checkpoint wrote rows
    that the resumed run will write again."""

    def __init__(self, path: str | os.PathLike, append: bool = False, resume_step: int | None = None,
                 tensorboard: str | os.PathLike | None = None):
        self.path = Path(path)
        if append and resume_step is not None and self.path.is_file():
            self._trim(resume_step)
        elif not append and (self.path.exists() or self.path.is_symlink()):
            self.path.unlink()  # a fresh file, so a symlink there is replaced, never written through
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.mark: tuple[float, int] | None = None  # (time, tokens) of the previous train row
        self.tb = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional extra

            self.tb = SummaryWriter(log_dir=str(tensorboard))

    def _trim(self, step: int) -> None:
        kept = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a row cut short by a kill
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                    kept.append(json.dumps(row) + "\n")
        atomic_write_bytes(self.path, "".join(kept).encode("utf-8"))

    def start(self, time: float, tokens: int) -> None:
        """Where the run (re)starts, for the first row's throughput."""
        self.mark = (time, tokens)

    def _write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def train(self, step: int, tokens: int, time: float, train_loss: float, lr: float, grad_norm: float | None) -> dict:
        rate = None
        if self.mark is not None and time > self.mark[0] and tokens > self.mark[1]:
            rate = (tokens - self.mark[1]) / (time - self.mark[0])
        self.mark = (time, tokens)  # also after a rollback, when the tokens went back
        row = {"kind": "train", "step": step, "tokens": tokens, "time": round(time, 3), "train_loss": _num(train_loss),
               "lr": _num(lr), "grad_norm": _num(grad_norm), "tokens_per_s": _num(rate)}
        self._write(row)
        if self.tb is not None:
            for key in ("train_loss", "lr", "grad_norm", "tokens_per_s"):
                if row[key] is not None:
                    self.tb.add_scalar(f"train/{key}", row[key], step)
        return row

    def eval(self, step: int, tokens: int, time: float, val_loss: float) -> dict:
        ppl = math.exp(min(val_loss, 50)) if math.isfinite(val_loss) else None
        row = {"kind": "eval", "step": step, "tokens": tokens, "time": round(time, 3), "val_loss": _num(val_loss),
               "val_ppl": _num(ppl)}
        self._write(row)
        if self.tb is not None:
            for key in ("val_loss", "val_ppl"):
                if row[key] is not None:
                    self.tb.add_scalar(f"val/{key}", row[key], step)
        return row

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------- reading


def _not_metrics(p: Path, why: str) -> UsageError:
    why = why.replace("\r", "\\r").replace("\n", "\\n")
    return UsageError(f"{p} is not a tinylm metrics file ({why}); give a NAME{SUFFIX} written by tinylm train, "
                      "or the model file beside it")


def _check_row(p: Path, n: int, row) -> dict:
    if not isinstance(row, dict):
        raise _not_metrics(p, f"line {n} is not a JSON object")
    kind = row.get("kind")
    if kind not in KINDS:
        raise _not_metrics(p, f"line {n} has no \"kind\" of train or eval")
    for key in FIELDS[kind]:
        if key not in row:
            raise _not_metrics(p, f"line {n} ({kind}) lacks {key!r}")
        value = row[key]
        if key != "kind" and not (value is None or isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise _not_metrics(p, f"line {n}: {key!r} is not a number")
    if not isinstance(row["step"], int) or row["tokens"] is None:
        raise _not_metrics(p, f"line {n}: step and tokens must be whole numbers")
    return row


def find_metrics(run: str | os.PathLike) -> Path:
    """The file to read for RUN: a .jsonl is the metrics file itself; a model path names the
    metrics file beside it (book.model -> book.metrics.jsonl); any other file is read as given
    (and refused if it is not a metrics file)."""
    p = Path(run)
    if p.suffix == ".jsonl":
        return p
    if p.suffix == ".model" or run_metrics(p).exists() or not p.exists():
        return run_metrics(p)
    return p


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The rows of a metrics file (or of the one beside a model path), each checked; a file that
    is missing, empty or not a metrics file is a UsageError naming it."""
    p = find_metrics(run)
    if not p.exists():
        beside = "" if Path(run) == p else f" (the metrics of model {run})"
        raise UsageError(f"metrics file {p}{beside} does not exist; check the path (tinylm train writes NAME{SUFFIX} "
                         "beside NAME.model)")
    if p.is_dir():
        raise UsageError(f"{p} is a directory; give a metrics file ({SUFFIX}) or a model file")
    if not p.is_file():
        raise UsageError(f"{p} is not a regular file (a pipe or device); give a metrics file ({SUFFIX})")
    rows = []
    try:
        with open(p, "rb") as f:
            for n, raw in enumerate(f, 1):
                if len(raw) > MAX_LINE:
                    raise _not_metrics(p, f"line {n} is {len(raw)} bytes long")
                try:
                    line = raw.decode("utf-8").strip()
                    if not line:
                        continue
                    row = json.loads(line)
                except (UnicodeDecodeError, ValueError):
                    if raw.endswith(b"\n") or n == 1:
                        raise _not_metrics(p, f"line {n} is not JSON") from None
                    break  # the last row, cut short by a run that was killed: the rows before it stand
                rows.append(_check_row(p, n, row))
    except OSError as e:
        raise UsageError(f"metrics file {p} cannot be read ({e.strerror or e}); check its permissions") from None
    if not rows:
        raise _not_metrics(p, "it holds no rows")
    return rows
