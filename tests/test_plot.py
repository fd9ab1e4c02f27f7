"""tinylm plot (report/plot.py): a PNG of non-trivial size, one colour per run, train + val + lr
lines per run, read from metrics files or model paths; the output is checked like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from tinylm.report.plot import make_figure, plot_runs  # noqa: E402
from tinylm.report.metrics import MetricsWriter, read_metrics  # noqa: E402
from tinylm.util.errors import UsageError  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path: Path, steps: int = 20, scale: float = 1.0) -> Path:
    w = MetricsWriter(path)
    w.start(0.0, 0)
    for s in range(1, steps + 1):
        w.train(s, s * 64, s * 0.1, scale * (4.0 - s * 0.1), 1e-3 * min(1.0, s / 5), 1.0)
        if s % 5 == 0:
            w.eval(s, s * 64, s * 0.1 + 0.01, scale * (4.1 - s * 0.1))
    w.close()
    return path


def test_figure_has_train_val_and_lr_lines_one_colour_per_run(tmp_path):
    runs = [(name, read_metrics(write_run(tmp_path / f"{name}.metrics.jsonl", scale=k)))
            for k, name in ((1.0, "a"), (0.9, "b"), (0.8, "c"))]
    fig = make_figure(runs)
    loss_ax, lr_ax = fig.axes
    assert len(loss_ax.get_lines()) == 6 and len(lr_ax.get_lines()) == 3  # train + val per run; lr per run
    colours = [line.get_color() for line in loss_ax.get_lines()]
    assert len(set(colours)) == 3
    assert [line.get_color() for line in lr_ax.get_lines()] == colours[::2]  # a run keeps its colour in both panels
    train_a = loss_ax.get_lines()[0]
    assert list(train_a.get_xdata()) == [r["tokens"] for r in runs[0][1] if r["kind"] == "train"]
    assert list(train_a.get_ydata()) == [r["train_loss"] for r in runs[0][1] if r["kind"] == "train"]
    assert [line.get_linestyle() for line in loss_ax.get_lines()[:2]] == ["-", "--"]


def test_plot_runs_writes_a_png_from_metrics_files_and_model_paths(tmp_path):
    write_run(tmp_path / "a.metrics.jsonl")
    write_run(tmp_path / "b.metrics.jsonl", scale=0.5)
    out = plot_runs([str(tmp_path / "a.metrics.jsonl"), str(tmp_path / "b.model")], str(tmp_path / "curves.png"))
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    with pytest.raises(UsageError, match="already exists.*--force"):
        plot_runs([str(tmp_path / "a.metrics.jsonl")], str(out))
    assert out.read_bytes() == data
    plot_runs([str(tmp_path / "a.metrics.jsonl")], str(out), force=True)
    assert out.read_bytes() != data


def test_plot_cli_from_a_real_run(tmp_path, capsys):
    from tinylm.cli import main

    (tmp_path / "corpus.txt").write_text(json.dumps(list(range(800))), encoding="utf-8")
    rc = main(["train", "-d", str(tmp_path / "corpus.txt"), "-o", str(tmp_path / "m.model"), "--layers", "1", "--embd", "16",
               "--heads", "2", "--context", "16", "--steps", "6", "--batch-size", "2", "--log-interval", "2",
               "--eval-interval", "3", "--device", "cpu", "--checkpoint-minutes", "0"])
    assert rc == 0
    rc = main(["plot", str(tmp_path / "m.model"), "-o", str(tmp_path / "c.png")])
    assert rc == 0
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
