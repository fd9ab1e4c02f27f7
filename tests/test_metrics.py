"""The metrics file of a training run (report/metrics.py): one row per log interval and per
validation with the documented keys, a resumed run appends (dropping rows past its checkpoint),
the gradient norm is the one clipping sees, output safety, and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import make_model, make_text
from tinylm.report.metrics import FIELDS, MetricsWriter, metrics_path, read_metrics, run_metrics
from tinylm.runner import TrainJob, run_training
from tinylm.train.step import train_step
from tinylm.train.trainer import TrainConfig
from tinylm.util.errors import UsageError

TEXT = make_text(6000, seed=5)
MODEL = dict(n_layer=1, n_head=2, n_embd=32, context_size=16, d_ff=64, dropout=0.0)
B, T = 4, 16


def job(folder: Path, **kw) -> TrainJob:
    (folder / "corpus.txt").write_text(TEXT, encoding="utf-8")
    train = dict(max_steps=12, batch_size=B, warmup_steps=2, lr=1e-2, checkpoint_every=4, device="cpu", log_interval=3,
                 eval_interval=6, checkpoint_minutes=0)
    train.update(kw.pop("train", {}))
    return TrainJob(dataset=str(folder / "corpus.txt"), output=folder / "out.model", train=TrainConfig(**train), model=MODEL, **kw)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_names():
    assert metrics_path(Path("models/book.model")) == Path("models/book.metrics.jsonl")
    assert run_metrics(Path("models/book.last.model")) == Path("models/book.metrics.jsonl")


def test_one_row_per_log_interval_and_per_validation_with_the_documented_keys(tmp_path):
    res = run_training(job(tmp_path))
    rows = [json.loads(line) for line in lines(tmp_path / "out.metrics.jsonl")]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [3, 6, 9, 12]
    assert [r["step"] for r in evals] == [6, 12]
    assert len(rows) == len(train) + len(evals)
    for r in rows:
        assert list(r) == list(FIELDS[r["kind"]])  # exactly the documented keys, in order
        assert r["tokens"] == r["step"] * B * T
    for r in train:
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in ("train_loss", "lr", "grad_norm", "tokens_per_s"))
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0
    assert train[0]["lr"] == pytest.approx(1e-2)  # warmup of 2 steps is over by step 3
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert evals[-1]["val_loss"] == pytest.approx(res.last_val)
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    assert read_metrics(tmp_path / "out.model") == rows  # the reader, from the model path


def test_resuming_appends_and_drops_the_rows_past_its_checkpoint(tmp_path):
    run_training(job(tmp_path))
    first = lines(tmp_path / "out.metrics.jsonl")
    folder = tmp_path / "out.model.ckpt"
    run_training(job(tmp_path, resume=str(folder / "step-00000004.ckpt")))
    after = lines(tmp_path / "out.metrics.jsonl")
    kept = [line for line in first if json.loads(line)["step"] <= 4]
    assert after[:len(kept)] == kept  # the rows before the checkpoint are the first run's, untouched
    rows = [json.loads(line) for line in after]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [3, 6, 9, 12]  # no step twice
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [6, 12]
    assert rows[len(kept)]["time"] >= rows[len(kept) - 1]["time"]  # the clock goes on from the checkpoint

    # resuming the end of the run with a longer limit appends the new rows after all of the old
    run_training(job(tmp_path, resume="auto", ignore_mismatch=True, train=dict(max_steps=18)))
    longer = lines(tmp_path / "out.metrics.jsonl")
    assert longer[:len(after)] == after
    assert [json.loads(line)["step"] for line in longer[len(after):] if '"train"' in line] == [15, 18]


def test_a_new_run_refuses_an_existing_metrics_file_unless_forced(tmp_path):
    (tmp_path / "out.metrics.jsonl").write_text("precious\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"out.metrics.jsonl already exists.*--force"):
        run_training(job(tmp_path))
    assert (tmp_path / "out.metrics.jsonl").read_text(encoding="utf-8") == "precious\n"
    assert not (tmp_path / "out.model").exists()
    run_training(job(tmp_path, force=True, train=dict(max_steps=3)))
    assert [json.loads(line)["step"] for line in lines(tmp_path / "out.metrics.jsonl")] == [3, 3]  # replaced, not appended


def test_the_metrics_file_may_not_be_an_input(tmp_path):
    j = job(tmp_path)
    j.dataset = str(tmp_path / "out.metrics.jsonl")
    (tmp_path / "out.metrics.jsonl").write_text(TEXT, encoding="utf-8")
    with pytest.raises(UsageError, match=r"the metrics of -o .* which is the dataset"):
        run_training(j)
    assert (tmp_path / "out.metrics.jsonl").read_text(encoding="utf-8") == TEXT


def test_the_logged_gradient_norm_is_the_norm_before_clipping():
    torch.manual_seed(0)
    model = make_model(vocab_size=40).train()
    x = torch.randint(0, 40, (2, 16))
    y = torch.randint(0, 40, (2, 16))
    reference = make_model(vocab_size=40).train()
    reference.load_state_dict(model.state_dict())
    _, loss = reference(x, y)
    loss.backward()
    want = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters() if p.grad is not None])
    cfg = TrainConfig(max_steps=1, grad_clip=0.01)  # clipping on: the norm logged is the one before it
    stats: dict = {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_step(model, opt, [(x, y)], cfg, torch.device("cpu"), None, stats=stats)
    assert float(stats["grad_norm"]) == pytest.approx(float(want), rel=1e-5)
    assert float(want) > 0.01


def test_writer_rows_nan_becomes_null_and_the_reader_takes_them(tmp_path):
    path = tmp_path / "run.metrics.jsonl"
    w = MetricsWriter(path)
    w.start(0.0, 0)
    w.train(1, 64, 0.5, float("nan"), 1e-3, float("inf"))
    w.eval(1, 64, 0.6, 2.0)
    w.close()
    rows = read_metrics(path)
    assert rows[0]["train_loss"] is None and rows[0]["grad_norm"] is None and rows[0]["tokens_per_s"] == 128.0
    assert rows[1]["val_ppl"] == pytest.approx(math.exp(2.0))
    # a row cut short by a killed run is dropped; the rows before it stand
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "st')
    assert read_metrics(path) == rows


def test_tensorboard_events_hold_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(job(tmp_path, tensorboard=tmp_path / "tb", train=dict(max_steps=6)))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    rows = read_metrics(tmp_path / "out.metrics.jsonl")
    want = [(r["step"], r["train_loss"]) for r in rows if r["kind"] == "train"]
    got = [(e.step, e.value) for e in acc.Scalars("train/train_loss")]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/val_loss")] == [r["step"] for r in rows if r["kind"] == "eval"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_graph_step_logs_its_gradient_norm(tmp_path):
    """The CUDA-graph step records the norm in the graph; the row reads the replayed value."""
    run_training(job(tmp_path, train=dict(device="cuda", cuda_graph=True, max_steps=12, log_interval=2)))
    train = [r for r in read_metrics(tmp_path / "out.metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    norms = [r["grad_norm"] for r in train]
    assert all(n is not None and n > 0 for n in norms)
    assert len(set(norms)) == len(norms)  # a fresh value every interval, not the captured step's
