"""GPT model: causality, parameter count, weight tying, init, overfitting, and KV-cache decoding
against the full forward pass (the reference)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model, tiny_config
from tinylm.util.errors import UsageError
from tinylm.model.gpt import ACTIVATIONS, GPT, POSITIONS, GPTConfig
from tinylm.train.trainer import TrainConfig, make_optimizer, train_step

VARIANTS = ([dict(positions=p) for p in POSITIONS]
            + [dict(activation=a) for a in ACTIVATIONS]
            + [dict(qk_norm=True), dict(logit_softcap=5.0), dict(bias=False, tie_weights=False),
               dict(positions="rope", activation="swiglu", qk_norm=True, logit_softcap=3.0)])
VARIANT_IDS = ["-".join(f"{k}={v}" for k, v in v.items()) for v in VARIANTS]


# ---------------------------------------------------------------- causality

@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_changing_future_tokens_never_changes_past_logits(variant):
    model = make_model(seed=0, **variant)
    T = model.cfg.context_size
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, model.cfg.vocab_size, (2, T), generator=g)
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 3, T // 2, T - 2):
            changed = idx.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.randint(0, 5, changed[:, t + 1:].shape, generator=g)) % model.cfg.vocab_size
            logits, _ = model(changed)
            torch.testing.assert_close(logits[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6)
            # and the change does reach the later positions, so the comparison above means something
            assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:], atol=1e-4)


# ---------------------------------------------------------------- parameter count

def expected_params(V: int, C: int, L: int, T: int, F: int, tied: bool, bias: bool = True, learned: bool = True,
                    swiglu: bool = False) -> int:
    b = 1 if bias else 0
    ln = C + b * C
    attn = C * 3 * C + b * 3 * C + C * C + b * C
    mlp = C * F + b * F + F * C + b * C + ((C * F + b * F) if swiglu else 0)
    block = 2 * ln + attn + mlp
    return V * C + (T * C if learned else 0) + L * block + ln + (0 if tied else V * C)


@pytest.mark.parametrize("kw, tied, bias, learned, swiglu", [
    (dict(), True, True, True, False),
    (dict(tie_weights=False), False, True, True, False),
    (dict(bias=False, positions="rope"), True, False, False, False),
    (dict(activation="swiglu", d_ff=48, positions="sinusoidal"), True, True, False, True),
])
def test_num_params_matches_hand_formula(kw, tied, bias, learned, swiglu):
    cfg = tiny_config(vocab_size=10, context_size=16, n_layer=2, n_head=2, n_embd=32, **kw)
    model = GPT(cfg)
    assert cfg.padded_vocab == 64  # 10 padded to the next multiple of 64
    want = expected_params(64, 32, 2, 16, cfg.ff_size, tied, bias, learned, swiglu)
    assert model.num_params() == want


def test_num_params_hand_computed_number():
    # vocab 10 -> 64 rows; C=32, L=2, T=16, F=128, biases, learned positions, tied head:
    # wte 2048 + wpe 512 + 2 * (ln 64 + qkv 3168 + proj 1056 + ln 64 + fc 4224 + proj 4128) + ln_f 64
    model = GPT(tiny_config(vocab_size=10))
    assert model.num_params() == 2048 + 512 + 2 * (64 + 3168 + 1056 + 64 + 4224 + 4128) + 64 == 28032


# ---------------------------------------------------------------- weight tying

def test_tied_head_shares_storage_with_embedding():
    model = make_model()
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    with torch.no_grad():
        model.wte.weight[5, 3] = 123.0
    assert model.lm_head.weight[5, 3].item() == 123.0
    # one tensor in the parameter list, and one gradient flowing into it from both uses
    assert sum(p is model.wte.weight for p in model.parameters()) == 1


def test_tied_weights_stay_shared_through_training():
    model = make_model().train()
    cfg = TrainConfig(max_steps=1, lr=1e-2, warmup_steps=0)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 40, (4, 16))
    for _ in range(3):
        train_step(model, opt, [(x, x.roll(-1, 1))], cfg, torch.device("cpu"), None)
    assert model.lm_head.weight is model.wte.weight
    torch.testing.assert_close(model.lm_head.weight, model.wte.weight, rtol=0, atol=0)


def test_untied_head_is_a_separate_tensor():
    model = make_model(tie_weights=False)
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()


# ---------------------------------------------------------------- init

def test_init_std_of_residual_projections_is_scaled_by_depth():
    n_layer, C = 4, 256
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, context_size=8, n_layer=n_layer, n_head=4, n_embd=C))
    want_resid = 0.02 / math.sqrt(2 * n_layer)
    for block in model.blocks:
        for proj in (block.attn.proj, block.mlp.proj):
            assert proj.weight.std().item() == pytest.approx(want_resid, rel=0.03)
            assert proj.weight.mean().abs().item() < 3 * want_resid / math.sqrt(proj.weight.numel())
            assert torch.count_nonzero(proj.bias) == 0
        for lin in (block.attn.qkv, block.mlp.fc):  # ordinary Linear layers keep 0.02
            assert lin.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)


# ---------------------------------------------------------------- config validation

@pytest.mark.parametrize("kw, flag", [
    (dict(n_layer=0), "--layers"), (dict(n_head=3), "--heads"), (dict(n_embd=0), "--embd"),
    (dict(context_size=0), "--context"), (dict(dropout=1.0), "--dropout"), (dict(positions="alibi"), "--positions"),
    (dict(activation="tanh"), "--activation"), (dict(logit_softcap=-1.0), "--softcap"),
    (dict(positions="rope", n_embd=30, n_head=2), "RoPE"),
])
def test_config_rejects_bad_values_naming_the_flag(kw, flag):
    with pytest.raises(UsageError, match=flag):
        tiny_config(**kw)


def test_config_round_trips_through_dict():
    cfg = tiny_config(positions="rope", activation="swiglu", qk_norm=True, logit_softcap=4.0)
    d = cfg.to_dict()
    assert GPTConfig.from_dict({**d, "unknown_future_field": 1}) == cfg


# ---------------------------------------------------------------- learning

def test_tiny_model_overfits_a_short_text():
    # 30 distinct characters repeated: every next character is determined, so the loss can reach 0.
    text = "qwertyuiopasdfghjklzxcvbnm.,;!"
    assert len(set(text)) == len(text) == 30
    stoi = {c: i for i, c in enumerate(text)}
    ids = torch.tensor([stoi[c] for c in text * 4])
    T = 16
    xs = torch.stack([ids[i:i + T] for i in range(30)])  # (30, T): every rotation
    ys = torch.stack([ids[i + 1:i + T + 1] for i in range(30)])
    model = make_model(seed=0, vocab_size=30, context_size=T).train()
    cfg = TrainConfig(max_steps=300, lr=1e-2, weight_decay=0.0, warmup_steps=0)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    first = None
    for step in range(300):
        loss = float(train_step(model, opt, [(xs, ys)], cfg, torch.device("cpu"), None))
        first = loss if first is None else first
        if loss < 0.01:
            break
    model.eval()
    with torch.no_grad():
        _, final = model(xs, ys)
    assert first > 3.0  # started near log(30)
    assert final.item() < 0.05


# ---------------------------------------------------------------- KV cache vs full forward

@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kv_cache_prefill_then_steps_matches_full_forward(variant):
    model = make_model(seed=3, **variant)
    T = model.cfg.context_size
    idx = torch.randint(0, model.cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V) reference
        cache = model.new_cache(2)
        prefix = 5
        logits, _ = model(idx[:, :prefix], cache=cache)
        torch.testing.assert_close(logits, full[:, :prefix], rtol=0, atol=1e-5)
        assert cache.pos == prefix
        for t in range(prefix, T):
            step, _ = model(idx[:, t:t + 1], cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, t], rtol=0, atol=1e-5)
        assert cache.pos == T


@pytest.mark.parametrize("positions", POSITIONS)
def test_kv_cache_one_token_at_a_time_across_the_full_context(positions):
    model = make_model(seed=4, positions=positions, context_size=32)
    idx = torch.randint(0, model.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(1)
        for t in range(32):
            step, _ = model(idx[:, t:t + 1], cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, t], rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="context"):
            model(idx[:, :1], cache=cache)  # the 33rd token does not fit


@pytest.mark.parametrize("positions", POSITIONS)
def test_kv_cache_chunked_prefill_matches_full_forward(positions):
    # several tokens at once after a non-empty cache exercise the explicit causal mask
    model = make_model(seed=5, positions=positions)
    idx = torch.randint(0, model.cfg.vocab_size, (3, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(3)
        outs = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 4), (4, 11), (11, 12), (12, 16))]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-5)


def test_last_only_returns_the_last_position():
    model = make_model()
    idx = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, model.cfg.padded_vocab)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)


def test_forward_rejects_sequences_longer_than_the_context():
    model = make_model()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_loss_ignores_targets_of_minus_one():
    model = make_model()
    x = torch.randint(0, 40, (2, 8))
    y = torch.randint(0, 40, (2, 8))
    with torch.no_grad():
        logits, _ = model(x)
        y_masked = y.clone()
        y_masked[:, 4:] = -1
        _, loss = model(x, y_masked)
    want = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, logits.size(-1)), y[:, :4].reshape(-1))
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)


def test_softcap_bounds_the_logits():
    model = make_model(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000.0)  # huge raw logits
        logits, _ = model(torch.randint(0, 40, (1, 8)))
    assert logits.abs().max().item() <= 2.0
    assert logits.abs().max().item() > 1.9


# ---------------------------------------------------------------- position encodings

def test_rope_is_a_rotation_that_depends_only_on_relative_position():
    from tinylm.model.positions import apply_rope, rope_tables

    hs, n = 16, 64
    cos, sin = rope_tables(n, hs)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, hs, generator=g), torch.randn(1, 1, 1, hs, generator=g)
    at = lambda x, p: apply_rope(x, cos[p:p + 1], sin[p:p + 1])  # noqa: E731
    torch.testing.assert_close(at(q, 0), q)  # position 0: identity
    for p in (1, 7, 40):  # a rotation keeps the norm
        torch.testing.assert_close(at(q, p).norm(), q.norm())
    score = lambda m, n_: float((at(q, m) * at(k, n_)).sum())  # noqa: E731
    for m, n_, shift in ((5, 2, 10), (3, 9, 20), (0, 0, 33)):
        assert score(m, n_) == pytest.approx(score(m + shift, n_ + shift), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_sinusoidal_table_values():
    from tinylm.model.positions import sinusoidal_table

    t = sinusoidal_table(50, 8)
    assert t.shape == (50, 8)
    torch.testing.assert_close(t[0], torch.tensor([0.0, 1.0] * 4))
    for p in (1, 17, 49):
        for i in range(4):
            angle = p / 10000 ** (2 * i / 8)
            assert t[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert t[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
