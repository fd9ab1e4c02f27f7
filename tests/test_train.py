"""Training: gradient accumulation, reproducibility, the optimizer's decay groups, exact
evaluation against a manual per-token NLL, and the Trainer end to end in-process."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tinylm.train.trainer as train_mod
from conftest import make_model, tiny_config
from tinylm.model.files import load_model
from tinylm.data.batches import split_tokens
from tinylm.util.errors import UsageError
from tinylm.model.gpt import GPT
from tinylm.train.schedule import cosine_lr
from tinylm.tokenizers import CharTokenizer
from tinylm.train.trainer import TrainConfig, Trainer, evaluate, make_optimizer, seed_everything, train_step

CPU = torch.device("cpu")


class RecordingOptimizer:
    """Stands in for the optimizer: keeps a copy of the gradients train_step leaves for it."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def batch(n: int, T: int = 16, V: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=g)
    return x, torch.randint(0, V, (n, T), generator=g)


# ---------------------------------------------------------------- gradient accumulation

@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_grad_accumulation_equals_one_big_batch(k, clip):
    x, y = batch(4 * k)
    cfg = TrainConfig(max_steps=1, grad_clip=clip)
    big, small = make_model(seed=0).train(), make_model(seed=0).train()
    rec_big, rec_small = RecordingOptimizer(big), RecordingOptimizer(small)
    loss_big = train_step(big, rec_big, [(x, y)], cfg, CPU, None)
    micro = [(x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]) for i in range(k)]
    loss_small = train_step(small, rec_small, micro, cfg, CPU, None)
    torch.testing.assert_close(loss_small, loss_big, rtol=1e-6, atol=1e-6)
    for name, g in rec_big.grads.items():
        torch.testing.assert_close(rec_small.grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert all(p.grad is None for p in small.parameters())  # zeroed for the next step
    if clip:  # the clip really acted, on the accumulated gradient
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in rec_small.grads.values()]))
        assert norm.item() == pytest.approx(clip, rel=1e-4)


def test_grad_accumulation_weights_after_one_step_match():
    x, y = batch(8)
    cfg = TrainConfig(max_steps=1, grad_clip=1.0)
    big, small = make_model(seed=0).train(), make_model(seed=0).train()
    opt_big = torch.optim.SGD(big.parameters(), lr=0.5)
    opt_small = torch.optim.SGD(small.parameters(), lr=0.5)
    train_step(big, opt_big, [(x, y)], cfg, CPU, None)
    train_step(small, opt_small, [(x[:2], y[:2]), (x[2:4], y[2:4]), (x[4:6], y[4:6]), (x[6:], y[6:])], cfg, CPU, None)
    before = make_model(seed=0).state_dict()
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(big.state_dict()["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


# ---------------------------------------------------------------- optimizer groups

@pytest.mark.parametrize("kw", [dict(), dict(tie_weights=False, positions="rope", activation="swiglu")])
def test_weight_decay_only_on_matrices(kw):
    model = make_model(**kw)
    opt = make_optimizer(model, TrainConfig(max_steps=1, weight_decay=0.1), CPU)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decay = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    names = set(by_id.values())
    assert decay | no_decay == names and not decay & no_decay
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)  # each tensor once (tied head too)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.1, 0.0}
    assert decay == {n for n, p in model.named_parameters() if p.dim() == 2}
    assert "wte.weight" in decay and "blocks.0.mlp.fc.weight" in decay
    assert all(n.endswith("bias") or ".ln" in n or n.startswith("ln_f") for n in no_decay)


# ---------------------------------------------------------------- evaluate

def manual_nll(model, tokens: torch.Tensor, T: int) -> float:
    """Mean NLL of every token after the first, each predicted from the window it falls in:
    consecutive windows of T inputs, the last one shorter (no padding), one at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(tokens) - 1, T):
            x = tokens[s:s + T]
            y = tokens[s + 1:s + T + 1]
            x = x[:len(y)]
            logits, _ = model(x[None])
            logp = logits[0, :, :].double().log_softmax(-1)
            total += -logp.gather(1, y[:, None]).sum().item()
            count += len(y)
    assert count == len(tokens) - 1
    return total / count


@pytest.mark.parametrize("n_tokens, batch_size", [(17, 4), (100, 3), (161, 16), (37, 1)])
def test_evaluate_equals_manual_per_token_nll(n_tokens, batch_size):
    model = make_model(seed=4)
    tokens = torch.randint(0, 40, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens))
    got = evaluate(model, tokens, 16, batch_size, CPU)
    assert got == pytest.approx(manual_nll(model, tokens, 16), rel=1e-5, abs=1e-6)


def test_evaluate_restores_training_mode():
    model = make_model(dropout=0.5).train()
    tokens = torch.randint(0, 40, (50,))
    a = evaluate(model, tokens, 16, 4, CPU)
    assert model.training
    assert a == evaluate(model, tokens, 16, 4, CPU)  # dropout was off during evaluation


# ---------------------------------------------------------------- Trainer

def make_trainer(corpus_text, tmp_path, seed=0, **kw):
    tok = CharTokenizer.train(corpus_text)
    args = dict(max_steps=20, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10, val_fraction=0.1,
                seed=seed, device="cpu", log_interval=1000)
    args.update(kw)
    cfg = TrainConfig(**args)
    seed_everything(seed)
    model = GPT(tiny_config(vocab_size=tok.vocab_size, dropout=0.1))
    split = split_tokens(tok.encode(corpus_text), cfg.val_fraction, 16)
    return Trainer(model, tok, split, cfg, out=tmp_path / "m.model", last=tmp_path / "m.last.model", meta={"x": 1}), split


def test_trainer_end_to_end(corpus_text, tmp_path):
    trainer, split = make_trainer(corpus_text, tmp_path, max_steps=60, eval_interval=20)
    res = trainer.run()
    assert res.steps == 60 and not res.interrupted
    assert [h[0] for h in res.history] == [20, 40, 60]
    vals = [h[2] for h in res.history]
    assert vals[-1] < vals[0] < math.log(trainer.tokenizer.vocab_size)
    assert res.best_val == min(vals)
    assert res.tokens == 60 * 8 * 16
    out, last = tmp_path / "m.model", tmp_path / "m.last.model"
    assert out.is_file() and last.is_file()
    # the best file holds the weights that scored best_val; the last file the final weights
    best = load_model(out)
    assert evaluate(best.model, split.val, 16, 8, CPU) == pytest.approx(res.best_val, rel=1e-5)
    assert best.meta["x"] == 1 and best.meta["val_loss"] == pytest.approx(res.best_val)
    final = load_model(last)
    assert final.meta["steps"] == 60
    for k, v in trainer.model.state_for_saving().items():
        assert torch.equal(final.model.state_dict()[k], v), k
    assert final.tokenizer.to_dict() == trainer.tokenizer.to_dict()


def test_trainer_without_validation_saves_the_latest_weights(corpus_text, tmp_path):
    trainer, _ = make_trainer(corpus_text, tmp_path, max_steps=5, val_fraction=0.0, eval_interval=0)
    res = trainer.run()
    assert res.history == [] and res.best_val == math.inf
    loaded = load_model(tmp_path / "m.model")
    for k, v in trainer.model.state_for_saving().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_seeded_training_is_reproducible(corpus_text, tmp_path):
    # dropout is on, so the global RNG matters as well as the batch order
    def weights(seed, sub):
        (tmp_path / sub).mkdir()
        t, _ = make_trainer(corpus_text, tmp_path / sub, seed=seed, max_steps=8, eval_interval=0, epochs=0)
        t.run()
        return t.model.state_dict()

    a, b, c = weights(3, "a"), weights(3, "b"), weights(4, "c")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_trainer_stops_at_epochs(corpus_text, tmp_path):
    trainer, split = make_trainer(corpus_text, tmp_path, max_steps=0, epochs=2, eval_interval=0, batch_size=64)
    per_epoch = max(1, ((len(split.train) - 1) // 16) // 64)
    res = trainer.run()
    assert res.steps == 2 * per_epoch
    assert res.epochs_done == pytest.approx(2.0)
    assert len(res.history) == 2  # once per epoch


def test_trainer_follows_the_cosine_schedule(corpus_text, tmp_path, monkeypatch):
    seen = []
    real = train_mod.train_step

    def spy(model, opt, micro, cfg, device, dtype, *rest, **kw):
        seen.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == seen[-1] for g in opt.param_groups)
        return real(model, opt, micro, cfg, device, dtype, *rest, **kw)

    monkeypatch.setattr(train_mod, "train_step", spy)
    trainer, _ = make_trainer(corpus_text, tmp_path, max_steps=20, warmup_steps=5, eval_interval=0)
    trainer.run()
    cfg = trainer.cfg
    want = [cosine_lr(s, s / 20, cfg.lr, cfg.min_lr, 5, warmup_progress=5 / 20) for s in range(20)]
    assert seen == pytest.approx(want, rel=1e-9)


def test_grad_accum_in_trainer_counts_tokens(corpus_text, tmp_path):
    trainer, _ = make_trainer(corpus_text, tmp_path, max_steps=3, grad_accum=2, batch_size=4, eval_interval=0)
    res = trainer.run()
    assert res.steps == 3 and res.tokens == 3 * 2 * 4 * 16


@pytest.mark.parametrize("kw, flag", [
    (dict(), "--epochs, --steps or --time"), (dict(max_steps=1, batch_size=0), "--batch-size"),
    (dict(max_steps=1, lr=0), "--lr"), (dict(max_steps=1, min_lr=1.0), "--min-lr"),
    (dict(max_steps=1, schedule="linear"), "--schedule"), (dict(max_steps=1, val_fraction=1.0), "--val-fraction"),
    (dict(max_steps=1, grad_accum=0), "--grad-accum"), (dict(max_steps=-1), "--steps"),
    (dict(max_steps=1, ema=1.0), "--ema"), (dict(max_steps=1, ema=-0.5), "--ema"),
])
def test_train_config_rejects_bad_values(kw, flag):
    with pytest.raises(UsageError, match=flag):
        TrainConfig(**kw)


def test_train_step_returns_mean_micro_batch_loss():
    model = make_model(seed=0).train()
    micro = [batch(2, seed=s) for s in range(3)]
    with torch.no_grad():
        want = sum(F.cross_entropy(model(x)[0].view(-1, 64), y.view(-1)) for x, y in micro) / 3
    got = train_step(model, RecordingOptimizer(model), micro, TrainConfig(max_steps=1), CPU, None)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- weight averaging (--ema)

def test_ema_update_follows_its_formula_and_applied_restores_the_weights():
    from tinylm.train.ema import EMA

    w = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    ema = EMA([w], decay=0.9)
    want = w.detach().clone()
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0], start=1):
        with torch.no_grad():
            w.fill_(value)
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))  # warm-up, then the decay
        want = d * want + (1 - d) * value
        torch.testing.assert_close(ema.shadow[0], want)
    raw = w.detach().clone()
    with ema.applied():
        torch.testing.assert_close(w.detach(), want)
    assert torch.equal(w.detach(), raw)


def test_trainer_with_ema_evaluates_and_saves_the_average_but_trains_the_raw_weights(corpus_text, tmp_path):
    trainer, split = make_trainer(corpus_text, tmp_path, max_steps=40, eval_interval=20, ema=0.9)
    res = trainer.run()
    best = load_model(tmp_path / "m.model")
    assert evaluate(best.model, split.val, 16, 8, CPU) == pytest.approx(res.best_val, rel=1e-5)
    average = dict(zip([n for n, _ in trainer.model.named_parameters()], trainer.ema.shadow))
    raw = dict(trainer.model.named_parameters())
    # the run ends with a validation at step 40, so one of the two files holds the final average
    saved = best.model.state_dict()
    if best.meta["steps"] == 40:
        for name, v in average.items():
            assert torch.equal(saved[name], v), name
    # training moved the raw weights away from their average; the last file holds the raw ones
    assert any(not torch.equal(average[n], raw[n].detach()) for n in raw)
    last = load_model(tmp_path / "m.last.model").model.state_dict()
    for name, p in raw.items():
        assert torch.equal(last[name], p.detach()), name


# ---------------------------------------------------------------- fast path vs plain path

def _losses_over_steps(fast: bool, steps: int = 6) -> list[float]:
    """fast: tinylm's step with bf16 autocast and fused AdamW taking the clip inside its kernel;
    plain: fp32 forward, torch's clip_grad_norm_ then an unfused AdamW step."""
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=40)).train()
    data = torch.randint(0, 40, (steps, 4, 17), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(max_steps=steps, lr=3e-3, grad_clip=0.5)
    opt = torch.optim.AdamW(train_mod.param_groups(model, cfg), lr=3e-3, betas=(0.9, 0.95), fused=fast)
    out = []
    for i in range(steps):
        x, y = data[i, :, :-1], data[i, :, 1:]
        if fast:
            loss = train_step(model, opt, [(x, y)], cfg, torch.device("cpu"), torch.bfloat16)
        else:
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        out.append(float(loss.detach()))
    return out


def test_fast_path_trains_like_the_plain_path_on_cpu():
    plain, fast = _losses_over_steps(False), _losses_over_steps(True)
    assert fast[0] == pytest.approx(plain[0], rel=1e-2)  # same initial loss, up to bf16 rounding
    assert fast == pytest.approx(plain, rel=1e-2)  # and the same trajectory within bf16 tolerance
    assert plain[-1] < plain[0] - 0.1  # the steps really trained (the comparison is not of constants)
