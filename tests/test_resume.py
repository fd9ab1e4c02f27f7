"""Resuming: a run killed at any step (SIGKILL, in a subprocess) and resumed ends with weights
bit-identical to a run never stopped; so does one resumed in-process from any of its checkpoints
(schedules, accumulation, epochs, dropout, Muon); SIGINT saves a checkpoint; which checkpoint a
command resumes, and what it refuses."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_command, cli_env, make_text, run_cli, tiny_config
from tinylm.train import state as trainstate
from tinylm.model.files import load_model
from tinylm.data.batches import split_tokens
from tinylm.util.errors import UsageError
from tinylm.model.gpt import GPT
from tinylm.runner import TrainJob, run_training
from tinylm.tokenizers import CharTokenizer
from tinylm.train.trainer import TrainConfig, Trainer, seed_everything

TEXT = make_text(6000, seed=11)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


# ---------------------------------------------------------------- SIGKILL at a random step, then --resume

FLAGS = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--batch-size", "4", "--grad-accum", "2",
         "--warmup", "5", "--lr", "1e-2", "--dropout", "0.1", "--eval-interval", "10", "--checkpoint-every", "4",
         "--log-interval", "1", "--steps", "200", "--device", "cpu"]


def shrink_pipe(fd: int) -> None:
    """A one-page pipe: the child blocks on its log after ~40 lines we have not read, so it is
    still training when we kill it however fast it runs (Linux; elsewhere the test may go on)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    except (ImportError, OSError):
        pass


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "corpus.txt").write_text(TEXT, encoding="utf-8")
    train = ["train", *FLAGS, "-d", "corpus.txt", "-o", "out.model"]
    whole = subprocess.Popen(cli_command(train), cwd=tmp_path / "a", env=cli_env(tmp_path / "a"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_after = random.randint(5, 120)  # the first checkpoint is at step 4
    victim = subprocess.Popen(cli_command(train), cwd=tmp_path / "b", env=cli_env(tmp_path / "b"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0)
    shrink_pipe(victim.stderr.fileno())
    seen = []
    try:
        for raw in iter(victim.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            seen.append(line)
            if line.split("| step ")[-1].split(" ")[0].isdigit() and int(line.split("| step ")[-1].split(" ")[0]) >= kill_after:
                os.kill(victim.pid, signal.SIGKILL)
                break
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended before step {kill_after} (rc {victim.returncode}):\n{''.join(seen)}"
    assert not (tmp_path / "b" / "out.last.model").exists()

    rc, _, err = run_cli([*train, "--resume"], tmp_path / "b")
    assert rc == 0 and "Traceback" not in err, err
    assert "Resuming exactly from checkpoint out.model.ckpt/step-" in err, err
    _, whole_err = whole.communicate(timeout=120)
    assert whole.returncode == 0, whole_err.decode()
    note = f"(killed after step {kill_after}; {[ln for ln in err.splitlines() if 'Resuming' in ln]})"
    for name in ("out.last.model", "out.model"):
        a, b = load_model(tmp_path / "a" / name), load_model(tmp_path / "b" / name)
        assert a.meta["steps"] == b.meta["steps"], (name, note)
        assert_same_weights(a.model.state_dict(), b.model.state_dict())


# ---------------------------------------------------------------- in-process: resume from every checkpoint

def make_trainer(folder: Path, **kw) -> Trainer:
    tok = CharTokenizer.train(TEXT)
    args = dict(max_steps=40, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10, val_fraction=0.1,
                seed=3, device="cpu", log_interval=5, checkpoint_every=5, keep_checkpoints=100, checkpoint_minutes=0)
    args.update(kw)
    cfg = TrainConfig(**args)
    seed_everything(cfg.seed)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, dropout=0.1))
    split = split_tokens(tok.encode(TEXT), cfg.val_fraction, 16)
    folder.mkdir(parents=True, exist_ok=True)
    return Trainer(model, tok, split, cfg, out=folder / "m.model", last=folder / "m.last.model", checkpoints=folder / "ckpt",
                   meta={"dataset_sha256": trainstate.text_sha256(TEXT)})


@pytest.mark.parametrize("kw", [
    dict(),
    dict(schedule="plateau", grad_accum=2, eval_interval=0, checkpoint_every=7, warmup_steps=3),  # crosses an epoch end
    dict(optimizer="muon", epochs=0, max_steps=30, grad_clip=0.0),
    dict(ema=0.9),  # the weight average is part of the state: the saved/evaluated models match too
], ids=["cosine", "plateau-accum-epochs", "muon-noclip", "ema"])
def test_resuming_from_any_checkpoint_is_bit_identical(tmp_path, kw):
    whole = make_trainer(tmp_path / "whole", **kw)
    res = whole.run()
    want = whole.model.state_dict()
    ckpts = trainstate.list_checkpoints(tmp_path / "whole" / "ckpt")
    assert len(ckpts) >= 4
    for step, path in ckpts[:-1]:
        t = make_trainer(tmp_path / f"from{step}", **kw)
        found = trainstate.load_checkpoint(path)
        trainstate.restore_trainer(t, found)
        assert t.result.steps == step
        again = t.run()
        assert again.steps == res.steps and again.tokens == res.tokens
        assert [h[2] for h in again.history] == [h[2] for h in res.history], step
        assert again.best_val == res.best_val
        assert_same_weights(want, t.model.state_dict())


def test_checkpoint_holds_what_an_exact_resume_needs(tmp_path):
    t = make_trainer(tmp_path, max_steps=10)
    t.run()
    state = trainstate.load_checkpoint(tmp_path / "ckpt" / "step-00000010.ckpt")
    assert state["step"] == 10 and state["val_loss"] == pytest.approx(t.result.last_val)
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert state["loop"]["epoch"] == 0 and state["loop"]["pos"] == 10
    assert state["train_config"]["max_steps"] == 10 and state["model_config"]["n_embd"] == 32
    assert state["data_sha256"] == trainstate.text_sha256(TEXT)
    assert state["tokenizer_sha256"] == trainstate.tokenizer_sha256(t.tokenizer)
    assert state["schedule"]["warmup_progress"] == pytest.approx(0.5)  # warmup ended at step 5 of 10


def test_keeps_the_newest_and_the_best(tmp_path):
    t = make_trainer(tmp_path, max_steps=40, keep_checkpoints=2, checkpoint_every=5, eval_interval=10)
    t.run()
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.ckpt", "step-00000035.ckpt", "step-00000040.ckpt"]
    best = trainstate.load_checkpoint(tmp_path / "ckpt" / "best.ckpt")
    assert best["val_loss"] == min(h[2] for h in t.result.history)


# ---------------------------------------------------------------- signals

class SignalAt:
    """The training forward, sending this process `signals` signals just before call `at`."""

    def __init__(self, model, at: int, signals: int = 1):
        self.model, self.at, self.signals, self.calls = model, at, signals, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.at:
            for _ in range(self.signals):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # let Python run the handler between the two
        return self.model(*a, **kw)[1]  # a training forward returns the loss

    def __getattr__(self, name):  # parameters() etc. come from the model
        return getattr(self.model, name)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigint_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    whole = make_trainer(tmp_path / "whole", checkpoint_every=0)
    whole.run()
    t = make_trainer(tmp_path / "stopped", checkpoint_every=0)
    t.fwd = SignalAt(t.model, at=17)
    res = t.run()
    assert res.interrupted and res.steps == 17
    path = tmp_path / "stopped" / "ckpt" / "step-00000017.ckpt"
    assert path.is_file() and (tmp_path / "stopped" / "m.last.model").is_file()
    again = make_trainer(tmp_path / "stopped", checkpoint_every=0)
    trainstate.restore_trainer(again, trainstate.load_checkpoint(path))
    again.run()
    assert_same_weights(whole.model.state_dict(), again.model.state_dict())


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    t = make_trainer(tmp_path, checkpoint_every=0)
    t.fwd = SignalAt(t.model, at=3, signals=2)
    with pytest.raises(KeyboardInterrupt):
        t.run()


# ---------------------------------------------------------------- the runner: which checkpoint, and refusals

MODEL = dict(n_layer=1, n_head=2, n_embd=32, context_size=16, d_ff=64, dropout=0.1)


def job(folder: Path, text: str = TEXT, **kw) -> TrainJob:
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    train = dict(max_steps=12, batch_size=4, warmup_steps=2, lr=1e-2, checkpoint_every=4, device="cpu", log_interval=100)
    train.update(kw.pop("train", {}))
    return TrainJob(dataset=str(folder / "corpus.txt"), output=folder / "out.model", train=TrainConfig(**train), model=MODEL, **kw)


def test_resume_refuses_other_data_or_flags_and_says_what_differs(tmp_path, messages):
    run_training(job(tmp_path))
    with pytest.raises(UsageError, match=r"differs in the data \(sha256 .* -> .*\).*--ignore-mismatch"):
        run_training(job(tmp_path, text=TEXT.upper(), resume="auto"))
    with pytest.raises(UsageError, match=r"differs in --lr 0.01 -> 0.02; --steps 12 -> 20"):
        run_training(job(tmp_path, resume="auto", train=dict(lr=0.02, max_steps=20)))
    res = run_training(job(tmp_path, resume="auto", ignore_mismatch=True, train=dict(max_steps=20)))
    assert res.steps == 20
    assert any("Resuming despite differences (--steps 12 -> 20)" in m for m in messages)


def test_classic_m_resumes_a_fitting_checkpoint_else_continues_from_weights(tmp_path, messages):
    whole = tmp_path / "whole"
    whole.mkdir()
    run_training(job(whole, train=dict(max_steps=12)))
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    run_training(job(stopped, train=dict(max_steps=12)))
    # a run that stopped at step 8: drop what came after its checkpoint at step 8
    for name in ("step-00000012.ckpt", "best.ckpt"):
        (stopped / "out.model.ckpt" / name).unlink(missing_ok=True)
    messages.clear()
    run_training(job(stopped, init_model=stopped / "out.model", resume_or_continue=True))
    assert any("Resuming exactly from checkpoint" in m and "step-00000008.ckpt" in m for m in messages), messages
    assert_same_weights(load_model(whole / "out.last.model").model.state_dict(), load_model(stopped / "out.last.model").model.state_dict())

    messages.clear()  # other data: the checkpoint does not fit, so the weights are continued
    run_training(job(stopped, text=TEXT[::-1], init_model=stopped / "out.model", resume_or_continue=True))
    assert any("does not fit this run (the data" in m and "continuing from the weights" in m for m in messages), messages

    messages.clear()  # no checkpoint at all
    shutil.rmtree(stopped / "out.model.ckpt")
    run_training(job(stopped, init_model=stopped / "out.model", resume_or_continue=True))
    assert any(m.startswith("No checkpoint for") and "continuing from its weights" in m for m in messages), messages


def test_a_new_run_replaces_earlier_checkpoints_only_with_force(tmp_path):
    run_training(job(tmp_path))
    folder = tmp_path / "out.model.ckpt"
    old = {p.name: p.stat().st_ino for p in folder.iterdir()}
    for name in ("out.model", "out.last.model"):  # say the run was killed before it wrote a model file
        (tmp_path / name).unlink()
    with pytest.raises(UsageError, match="checkpoints of an earlier run .*--resume.*--force"):
        run_training(job(tmp_path))
    assert {p.name: p.stat().st_ino for p in folder.iterdir()} == old  # refused before touching anything
    run_training(job(tmp_path, force=True, train=dict(max_steps=6, checkpoint_every=5)))
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "step-00000005.ckpt", "step-00000006.ckpt"]


def test_resuming_an_older_checkpoint_drops_the_abandoned_newer_ones(tmp_path):
    run_training(job(tmp_path, train=dict(max_steps=12)))
    folder = tmp_path / "out.model.ckpt"
    run_training(job(tmp_path, resume=str(folder / "step-00000004.ckpt"), train=dict(max_steps=12, checkpoint_every=3)))
    steps = [s for s, _ in trainstate.list_checkpoints(folder)]
    assert steps == [6, 9, 12]  # the first run's 8 is gone; its 12 was replaced by this run's


def test_classic_m_resumes_a_run_killed_before_its_first_model_file(tmp_path, messages):
    run_training(job(tmp_path, train=dict(max_steps=12, eval_interval=100)))
    for name in ("out.model", "out.last.model"):
        (tmp_path / name).unlink()
    with pytest.raises(UsageError, match="does not exist, and its checkpoint .* does not fit this run \\(the data"):
        run_training(job(tmp_path, text=TEXT[::-1], init_model=tmp_path / "out.model", resume_or_continue=True,
                         train=dict(max_steps=12, eval_interval=100)))
    messages.clear()
    run_training(job(tmp_path, init_model=tmp_path / "out.model", resume_or_continue=True, train=dict(max_steps=12, eval_interval=100)))
    assert any("Resuming exactly from checkpoint" in m for m in messages), messages
    assert load_model(tmp_path / "out.last.model").meta["steps"] == 12
