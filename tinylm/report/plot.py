"""Loss curves: `tinylm plot RUN... -o curves.png`.

Each RUN is a metrics file (NAME.metrics.jsonl, see metrics.py) or a model path, read as the
metrics file beside it. The figure has two panels against tokens seen: the loss (training loss
as a solid line, validation loss dashed with a marker per evaluation) and the learning rate; each
run has one colour in both. matplotlib (the `plot` extra) is imported only here, drawn on its Agg
canvas with no pyplot, so no window, display or global figure state is involved.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..util.errors import UsageError
from ..util.files import atomic_write_bytes, same_file, writable_folder
from .metrics import find_metrics, read_metrics

PLOT_HINT = "pip install 'tinylm[plot]'"


def run_label(path: Path) -> str:
    """models/book.metrics.jsonl -> "book"."""
    name = path.name
    return name[: -len(".metrics.jsonl")] if name.endswith(".metrics.jsonl") else path.stem


def _series(rows: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["tokens"], r[key]) for r in rows if r["kind"] == kind and r.get(key) is not None]
    return [t for t, _ in pairs], [v for _, v in pairs]


def make_figure(runs: list[tuple[str, list[dict]]]):
    """A matplotlib Figure of (label, metrics rows) runs: loss panel and learning-rate panel."""
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 - optional extra
    except ImportError:
        raise UsageError(f"tinylm plot needs matplotlib, which is not installed; {PLOT_HINT}") from None
    fig = Figure(figsize=(8, 6.5), dpi=100, layout="constrained")
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    colours = [f"C{i % 10}" for i in range(len(runs))]  # matplotlib's default cycle, one per run
    for (label, rows), colour in zip(runs, colours):
        tokens, train = _series(rows, "train", "train_loss")
        if tokens:
            loss_ax.plot(tokens, train, color=colour, linewidth=1.2, label=f"{label} train")
        tokens, val = _series(rows, "eval", "val_loss")
        if tokens:
            loss_ax.plot(tokens, val, color=colour, linestyle="--", marker="o", markersize=3, label=f"{label} val")
        tokens, lr = _series(rows, "train", "lr")
        if tokens:
            lr_ax.plot(tokens, lr, color=colour, linewidth=1.2, label=label)
    loss_ax.set_ylabel("loss (nats per token)")
    loss_ax.set_title("training (solid) and validation (dashed) loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize="small")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("tokens seen")
    lr_ax.grid(alpha=0.3)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return fig


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _check_output(out: Path, inputs: list[Path], force: bool) -> None:
    for p in inputs:
        if same_file(out, p):
            raise UsageError(f"output {out} is the input {p}; no flag lets the plot replace an input: choose another -o")
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; give a file path such as {out / 'curves.png'}")
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(f"output {out} already exists; choose another -o, or pass --force to overwrite")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist; create it (mkdir -p {folder}) or choose another -o")
    why = writable_folder(folder)
    if why is not None:
        raise UsageError(f"output folder {folder} is not writable ({why}); choose another -o or fix its permissions")


def plot_runs(runs: list[str], out: str, force: bool = False) -> Path:
    """Read every run, check the output, draw, and write the PNG atomically; returns its path."""
    out_p = Path(out)
    files = [find_metrics(r) for r in runs]
    labels = [run_label(f) for f in files]
    if len(set(labels)) < len(labels):  # two runs of one name in different folders: their paths tell them apart
        labels = [str(r) for r in runs]
    loaded = [(label, read_metrics(r)) for label, r in zip(labels, runs)]  # every input checked before any output
    _check_output(out_p, [Path(r) for r in runs] + files, force)
    fig = make_figure(loaded)
    try:
        atomic_write_bytes(out_p, figure_png(fig))
    except OSError as e:
        raise UsageError(f"could not write {out_p} ({e.strerror or e}); free some disk space, or choose another -o") from None
    return out_p


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw loss and learning-rate curves of training runs",
                       description="Draw the training and validation loss, and the learning rate, against tokens seen, "
                                   "one colour per run, from metrics files (NAME.metrics.jsonl) or the model files "
                                   "beside them. Needs matplotlib: pip install 'tinylm[plot]'.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="a metrics file, or a model file (its NAME.metrics.jsonl is read)")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def cmd_plot(args) -> int:
    from ..util.log import log  # noqa: PLC0415

    out = plot_runs(args.runs, args.output, force=args.force)
    log.info("Saved the curves of %d run(s) to %s", len(args.runs), out)
    return 0
