"""Faults during training: a step with a non-finite loss or gradient is skipped (weights and
optimizer state untouched) and logged; several in a row roll back to the last checkpoint with a
lower learning rate; a run that keeps diverging stops with one clear error; nothing with NaN
weights is ever written; a full disk or a save cut off before its rename leaves the previous
checkpoint intact; running out of GPU memory is one line suggesting a smaller batch."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

import tinylm.util.files as ckpt_mod  # where the atomic writer opens its files
import tinylm.train.trainer as train_mod
from conftest import make_model, make_text, tiny_config
from tinylm.train import state as trainstate
from tinylm.model.files import load_model
from tinylm.cli import build_parser, cmd_train, run_guarded
from tinylm.data.batches import split_tokens
from tinylm.util.errors import UsageError
from tinylm.model.gpt import GPT
from tinylm.train.schedule import cosine_lr
from tinylm.tokenizers import CharTokenizer
from tinylm.train.trainer import TrainConfig, Trainer, make_optimizer, seed_everything, train_step

CPU = torch.device("cpu")
TEXT = make_text(6000, seed=12)


class Poisoned:
    """The training forward, with a NaN loss on the given (1-based) calls; `weights_at`: calls
    before which a weight is set to inf instead, as a diverging update would leave it."""

    def __init__(self, model, nan_calls=(), weights_at=()):
        self.model, self.nan_calls, self.weights_at, self.calls = model, set(nan_calls), set(weights_at), 0

    def __call__(self, x, y):
        self.calls += 1
        if self.calls in self.weights_at:
            with torch.no_grad():
                self.model.blocks[0].mlp.fc.weight[0, 0] = math.inf
        _, loss = self.model(x, y)
        return loss * math.nan if self.calls in self.nan_calls else loss  # a training forward returns the loss

    def __getattr__(self, name):
        return getattr(self.model, name)


def make_trainer(folder, **kw) -> Trainer:
    tok = CharTokenizer.train(TEXT)
    args = dict(max_steps=20, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=10, seed=0, device="cpu",
                log_interval=1, checkpoint_every=5, checkpoint_minutes=0, nan_patience=3, max_rollbacks=2)
    args.update(kw)
    cfg = TrainConfig(**args)
    seed_everything(cfg.seed)
    model = GPT(tiny_config(vocab_size=tok.vocab_size))
    split = split_tokens(tok.encode(TEXT), cfg.val_fraction, 16)
    return Trainer(model, tok, split, cfg, out=folder / "m.model", last=folder / "m.last.model", checkpoints=folder / "ckpt")


def assert_everything_saved_is_finite(folder) -> None:
    for p in folder.glob("*.model"):
        assert all(torch.isfinite(v).all() for v in load_model(p).model.state_dict().values()), p
    for p in (folder / "ckpt").glob("*.ckpt"):
        state = trainstate.load_checkpoint(p)
        assert all(torch.isfinite(v).all() for v in state["model"].values()), p


# ---------------------------------------------------------------- one step

def snapshot(model, opt) -> tuple[dict, list]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("kind", ["adamw", "adamw-fused", "muon"])
def test_a_non_finite_step_changes_neither_weights_nor_optimizer_state(kind):
    model = make_model(seed=0).train()
    cfg = TrainConfig(max_steps=1, optimizer="muon" if kind == "muon" else "adamw")
    opt = make_optimizer(model, cfg, CPU)
    if kind == "adamw-fused":  # the CUDA path's optimizer, on the CPU: the skip happens inside the kernel (found_inf)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 40, (4, 16), generator=g), torch.randint(0, 40, (4, 16), generator=g)
    assert torch.isfinite(train_step(model, opt, [(x, y)], cfg, CPU, None))  # builds the optimizer state
    weights, state = snapshot(model, opt)
    loss = train_step(model, opt, [(x, y)], cfg, CPU, None, forward=Poisoned(model, nan_calls={1}))
    assert torch.isnan(loss)
    after_w, after_s = snapshot(model, opt)
    for k in weights:
        assert torch.equal(weights[k], after_w[k]), k
    assert str(after_s) == str(state)  # every moment and the step counts, exactly
    assert torch.isfinite(train_step(model, opt, [(x, y)], cfg, CPU, None))  # and training goes on


# ---------------------------------------------------------------- skip, roll back, give up

def test_a_few_non_finite_steps_are_skipped_and_logged(tmp_path, messages):
    t = make_trainer(tmp_path)
    t.fwd = Poisoned(t.model, nan_calls={8, 9})
    res = t.run()
    assert res.steps == 20 and int(t.skipped) == 2 and t.rollbacks == 0
    assert sum("Skipped 1 step(s) with a non-finite loss or gradient" in m for m in messages) == 2
    assert_everything_saved_is_finite(tmp_path)


def test_non_finite_steps_in_a_row_roll_back_with_a_lower_learning_rate(tmp_path, messages):
    t = make_trainer(tmp_path)
    t.fwd = Poisoned(t.model, nan_calls={13, 14, 15, 16})
    res = t.run()
    rolled = [m for m in messages if "rolled back" in m]
    assert len(rolled) == 1 and "step-00000010.ckpt (step 10)" in rolled[0] and "scaled by 0.5" in rolled[0], messages
    assert res.steps == 20 and t.rollbacks == 1 and t.lr_scale == 0.5
    cfg = t.cfg
    assert t.lr == pytest.approx(0.5 * cosine_lr(19, 19 / 20, cfg.lr, cfg.min_lr, 2, 2 / 20))
    assert trainstate.load_checkpoint(tmp_path / "ckpt" / "step-00000020.ckpt")["schedule"]["lr_scale"] == 0.5
    assert_everything_saved_is_finite(tmp_path)


def test_a_run_that_keeps_diverging_stops_with_one_clear_error(tmp_path, messages):
    t = make_trainer(tmp_path, max_steps=60)
    t.fwd = Poisoned(t.model, nan_calls=set(range(12, 1000)))
    with pytest.raises(UsageError) as e:
        t.run()
    msg = str(e.value)
    assert "training diverged" in msg and "after 2 rollback(s)" in msg and "--lr" in msg and "\n" not in msg
    assert sum("rolled back" in m for m in messages) == 2
    assert_everything_saved_is_finite(tmp_path)


def test_inf_weights_are_never_saved_and_roll_back(tmp_path, messages):
    t = make_trainer(tmp_path, eval_interval=5)
    t.fwd = Poisoned(t.model, weights_at={14})  # every later step is non-finite until the rollback (at 16)
    res = t.run()
    assert res.steps == 20 and t.rollbacks == 1 and t.weights_finite()
    assert any("Checkpoint postponed" in m for m in messages)
    assert_everything_saved_is_finite(tmp_path)


def test_saving_refuses_non_finite_weights(tmp_path, messages):
    t = make_trainer(tmp_path)
    with torch.no_grad():
        t.model.wte.weight[3, 3] = math.nan
    t._save(tmp_path / "nan.model")
    t.saver.wait()
    trainstate.checkpoint(t)
    assert not (tmp_path / "nan.model").exists() and not (tmp_path / "ckpt").exists()
    assert any("Not saving" in m and "NaN/inf" in m for m in messages)


# ---------------------------------------------------------------- disks

class FullDisk:
    """`open` for the checkpoint module: files whose name contains `match` get half their data
    written, then ENOSPC, as on a full disk."""

    def __init__(self, match: str):
        self.match, self.real = match, open

    def __call__(self, file, mode="r", *a, **kw):
        f = self.real(file, mode, *a, **kw)
        if self.match not in os.path.basename(str(file)):
            return f
        real_write = f.write

        def write(data):
            real_write(data[:len(data) // 2])
            f.flush()
            raise OSError(28, "No space left on device")
        f.write = write
        return f


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    t = make_trainer(tmp_path)
    monkeypatch.setattr(ckpt_mod, "open", FullDisk("step-00000010"), raising=False)
    with pytest.raises(UsageError) as e:
        t.run()
    msg = str(e.value)
    assert "No space left on device" in msg and "step-00000005.ckpt is intact" in msg and "--resume" in msg and "\n" not in msg
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["step-00000005.ckpt"]  # no half-written file
    state = trainstate.load_checkpoint(tmp_path / "ckpt" / "step-00000005.ckpt")
    assert state["step"] == 5


def test_a_full_disk_while_writing_a_model_file_is_one_clear_error(tmp_path, monkeypatch):
    t = make_trainer(tmp_path, max_steps=4, checkpoint_every=0, eval_interval=0)
    monkeypatch.setattr(ckpt_mod, "open", FullDisk("m.last.model"), raising=False)
    with pytest.raises(UsageError, match=r"could not write the model file .*m\.last\.model \(No space left on device\); the previous"):
        t.run()
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


def test_a_save_cut_off_between_write_and_rename_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    t = make_trainer(tmp_path)
    real_replace = os.replace

    def cut_off(src, dst):
        if "step-00000010" in str(dst):
            raise KeyboardInterrupt  # e.g. a second Ctrl-C, after the data is written, before the rename
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", cut_off)
    with pytest.raises(KeyboardInterrupt):
        t.run()
    monkeypatch.undo()
    folder = tmp_path / "ckpt"
    assert sorted(os.listdir(folder)) == ["step-00000005.ckpt"]
    # SIGKILL at that point leaves the temp file behind: it is never mistaken for a checkpoint
    (folder / ".step-00000010.ckpt.tmp4242").write_bytes(b"half a checkpoint")
    found, problems = trainstate.latest_usable(folder)
    assert found[0].name == "step-00000005.ckpt" and not problems
    again = make_trainer(tmp_path)
    trainstate.restore_trainer(again, found[1])
    assert again.run().steps == 20
    assert not list(folder.glob(".*"))  # the next save cleared the leftover


# ---------------------------------------------------------------- out of GPU memory

def test_out_of_memory_is_one_line_suggesting_a_smaller_batch(tmp_path, monkeypatch, capsys):
    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)")

    monkeypatch.setattr(train_mod, "train_step", oom)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    args = build_parser().parse_args(["train", "--layers", "1", "--embd", "32", "--heads", "2", "--context", "16",
                                      "--steps", "2", "--batch-size", "4", "--device", "cpu", "-d", "corpus.txt", "-o", "out.model"])
    assert run_guarded(cmd_train, args) == 2
    # (log lines, there when an earlier in-process test has set tinylm's logging up, are not the error)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " INFO | " not in line]
    assert len(err) == 1 and err[0].startswith("error: out of GPU memory (CUDA out of memory.")
    assert "--batch-size" in err[0] and "--grad-accum" in err[0]


# ---------------------------------------------------------------- CUDA: the skip stays on the device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU = torch.device("cuda")


def assert_same_optimizer_state(opt, before) -> None:
    """`before`: an earlier opt.state_dict() (a list of them for the Optimizers wrapper)."""
    now = opt.state_dict()
    for b, n in zip(before if isinstance(before, list) else [before], now if isinstance(now, list) else [now]):
        for i, st in b["state"].items():
            for k, v in st.items():
                assert torch.equal(n["state"][i][k], v), (i, k)


def tensor_addresses(graphed) -> list[int]:
    """Where the parameters and optimizer state of a GraphedStep live on the GPU."""
    params = [p for g in graphed.opt.param_groups for p in g["params"]]
    return [p.data_ptr() for p in params] + [v.data_ptr() for p in params for v in graphed.opt.state[p].values()]


class PoisonTargets:
    """Wraps a step function (GraphedStep or train_step's closure): on the given calls every
    target is -1 (ignored), so the loss is 0/0 = NaN, even inside a captured CUDA graph."""

    def __init__(self, step, bad_calls):
        self.step, self.bad, self.calls = step, set(bad_calls), 0

    record_at = 0  # on this call, keep the addresses of the graphed step's tensors in self.ptrs

    def __call__(self, micro_batches, lr):
        self.calls += 1
        if self.calls in self.bad:
            micro_batches = [(x, torch.full_like(y, -1)) for x, y in micro_batches]
        loss = self.step(micro_batches, lr)
        if self.calls == self.record_at:
            self.ptrs = tensor_addresses(self.step)
        return loss

    def __getattr__(self, name):
        return getattr(self.step, name)


@cuda
@pytest.mark.parametrize("mode", ["eager-fused", "graph"])
def test_cuda_skips_a_non_finite_step_on_the_device_without_a_sync(mode):
    from tinylm.train.graph_step import GraphedStep
    from tinylm.model.gpt import GPTConfig
    from tinylm.train.trainer import param_groups

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_size=32, n_layer=2, n_head=2, n_embd=64)).to(GPU).train()
    cfg = TrainConfig(max_steps=8, lr=3e-3)
    if mode == "graph":
        step = GraphedStep(model, param_groups(model, cfg), cfg, None, (8, 32))
        opt = step.opt
    else:
        opt = make_optimizer(model, cfg, GPU)

        def step(mb, lr):
            return train_step(model, opt, mb, cfg, GPU, None)
    poisoned = PoisonTargets(step, bad_calls={6})
    data = torch.randint(0, 50, (8, 33), device=GPU)
    mb = [(data[:, :-1], data[:, 1:])]
    for _ in range(5):  # graph: 3 eager warm-up steps, the capture, a replay
        poisoned(mb, 3e-3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = copy.deepcopy(opt.state_dict())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the step raises
    try:
        loss = poisoned(mb, 3e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isnan(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert_same_optimizer_state(opt, state)
    assert torch.isfinite(poisoned(mb, 3e-3))
    assert not torch.equal(model.wte.weight, weights["wte.weight"])


def cuda_trainer(folder, **kw) -> Trainer:
    return make_trainer(folder, device="cuda", dtype="fp32", **kw)


@cuda
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_cuda_step_bookkeeping_has_no_host_sync(tmp_path, graph):
    from tinylm.util.log import Progress

    t = cuda_trainer(tmp_path, cuda_graph=graph, log_interval=1000, eval_interval=0)
    progress = Progress(1000)
    for _ in range(5):  # the epoch's iterator, optimizer state and (graph) the capture
        t._step(progress)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            t._step(progress)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert t.result.steps == 8


@cuda
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_cuda_rollback_and_resume(tmp_path, graph, messages):
    t = cuda_trainer(tmp_path, cuda_graph=graph)
    step = t.graphed if graph else None
    if graph:
        t.graphed = PoisonTargets(t.graphed, bad_calls={13, 14, 15})
        t.graphed.record_at = 5  # after the capture (call 4): the tensors the graph was recorded on
    else:
        t.fwd = Poisoned(t.model, nan_calls={13, 14, 15})
    res = t.run()
    assert res.steps == 20 and t.rollbacks == 1 and t.weights_finite(), messages
    assert any("rolled back to checkpoint" in m for m in messages)
    if graph:  # restored in place: the captured graph still steps the same tensors, with the same lr tensor
        assert all(g["lr"] is step.lr for g in t.opt.param_groups)
        assert t.graphed.ptrs == tensor_addresses(step)
    again = cuda_trainer(tmp_path / "again", cuda_graph=graph)
    trainstate.restore_trainer(again, trainstate.load_checkpoint(tmp_path / "ckpt" / "step-00000010.ckpt"))
    if graph:
        assert all(g["lr"] is again.graphed.lr for g in again.opt.param_groups)
    assert again.run().steps == 20 and again.weights_finite()
