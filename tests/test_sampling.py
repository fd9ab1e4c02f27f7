"""Sampling: the pure filters on hand-made logits, greedy and seeded sampling, SamplingConfig
validation, and the decoding loop (cache vs no cache, EOS, a manual greedy reference)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model
from tinylm.util.errors import UsageError
from tinylm.generate.engine import (Decoder, SamplingConfig, generate, repetition_filter, resolve_window, row_keys, sample_next,
                             top_k_filter, top_p_filter, uniform_noise)

INF = float("inf")


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(torch.isfinite(row)).flatten().tolist() for row in logits]


# ---------------------------------------------------------------- top-k

def test_top_k_docstring_example():
    out = top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
    assert out.tolist() == [[-INF, 3.0, 2.0, -INF]]


def test_top_k_per_row():
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.9, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert kept(top_k_filter(logits, 2)) == [[1, 3], [0, 1]]
    assert kept(top_k_filter(logits, 1)) == [[3], [0]]


def test_top_k_keeps_all_ties_at_the_kth_value():
    assert kept(top_k_filter(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), 1)) == [[1, 2]]
    assert kept(top_k_filter(torch.tensor([[3.0, 2.0, 2.0, 0.0, 2.0]]), 2)) == [[0, 1, 2, 4]]


@pytest.mark.parametrize("k", [0, 4, 10])
def test_top_k_off_values_are_no_ops(k):
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.equal(top_k_filter(logits, k), logits)


def test_top_k_leaves_kept_values_unchanged():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    out = top_k_filter(logits, 7)
    mask = torch.isfinite(out)
    assert mask.sum(dim=1).tolist() == [7, 7, 7]
    assert torch.equal(out[mask], logits[mask])
    assert torch.equal(mask, torch.zeros_like(mask).scatter(1, logits.topk(7).indices, True))


# ---------------------------------------------------------------- top-p

def log_probs(*p: float) -> torch.Tensor:
    return torch.tensor([[math.log(x) for x in p]], dtype=torch.float64)


def test_top_p_docstring_example():
    assert kept(top_p_filter(log_probs(0.5, 0.3, 0.2), 0.7)) == [[0, 1]]


def test_top_p_keeps_the_token_that_crosses_p():
    assert kept(top_p_filter(log_probs(0.5, 0.25, 0.125, 0.125), 0.6)) == [[0, 1]]
    assert kept(top_p_filter(log_probs(0.5, 0.25, 0.125, 0.125), 0.76)) == [[0, 1, 2]]


def test_top_p_boundary_mass_exactly_p_keeps_the_smallest_set():
    # 0.5 + 0.25 == 0.75 exactly in binary floating point: the first two already reach p
    assert kept(top_p_filter(log_probs(0.5, 0.25, 0.125, 0.125), 0.75)) == [[0, 1]]
    assert kept(top_p_filter(log_probs(0.5, 0.25, 0.125, 0.125), 0.5)) == [[0]]
    # uniform: each token is exactly 1/4; p = 1/2 needs exactly two of them
    out = top_p_filter(torch.zeros(2, 4), 0.5)
    assert [len(k) for k in kept(out)] == [2, 2]


def test_top_p_works_in_the_original_order():
    # probs out of order: 0.125 0.5 0.125 0.25 -> nucleus at p=0.7 is ids 1 and 3
    assert kept(top_p_filter(log_probs(0.125, 0.5, 0.125, 0.25), 0.7)) == [[1, 3]]


def test_top_p_ties_keep_a_nucleus_of_the_right_size():
    # ties straddling the cut: probs 0.4 0.2 0.2 0.2, p = 0.5 -> the 0.4 and one of the 0.2s
    out = kept(top_p_filter(log_probs(0.4, 0.2, 0.2, 0.2), 0.5))[0]
    assert len(out) == 2 and out[0] == 0


def test_top_p_tiny_p_keeps_only_the_most_likely():
    logits = torch.tensor([[0.1, 2.0, 1.9, -3.0]])
    assert kept(top_p_filter(logits, 1e-9)) == [[1]]


def test_top_p_one_is_a_no_op():
    logits = torch.randn(2, 9)
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_leaves_kept_values_unchanged_and_rows_independent():
    logits = torch.stack([log_probs(0.5, 0.25, 0.125, 0.125)[0], log_probs(0.125, 0.125, 0.25, 0.5)[0]])
    out = top_p_filter(logits, 0.75)
    assert kept(out) == [[0, 1], [2, 3]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


# ---------------------------------------------------------------- repetition penalty

def test_repetition_filter_hand_made():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [False, False, True, True]])
    out = repetition_filter(logits, seen, 2.0)
    # positive logits are divided by the penalty, negative ones multiplied, unseen ones untouched
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.25, 1.5]]
    assert logits.tolist()[0] == [2.0, -1.0, 0.5, 3.0]  # input untouched


def test_repetition_filter_below_one_boosts_seen_tokens():
    out = repetition_filter(torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[True, True, True]]), 0.5)
    assert out.tolist() == [[4.0, -0.5, 0.0]]


def test_repetition_filter_one_is_a_no_op():
    logits = torch.randn(1, 5)
    assert torch.equal(repetition_filter(logits, torch.ones(1, 5, dtype=torch.bool), 1.0), logits)


# ---------------------------------------------------------------- sample_next

def test_greedy_is_argmax():
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=0.0)
    assert torch.equal(sample_next(logits, cfg), logits.argmax(dim=-1))
    assert torch.equal(sample_next(logits, cfg, row_keys(3, 5), 7), logits.argmax(dim=-1))


def test_top_k_one_sampling_is_greedy_at_any_temperature():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(temperature=1.7, top_k=1)
    for seed in range(5):
        assert torch.equal(sample_next(logits, cfg, row_keys(seed, 4), seed), logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.zeros(1, 1000)  # uniform: two different noise draws will disagree
    cfg = SamplingConfig(temperature=1.0)
    draws = lambda seed, steps: [int(sample_next(logits, cfg, row_keys(seed, 1), s)) for s in steps]  # noqa: E731
    assert draws(7, range(20)) == draws(7, range(20))
    assert draws(7, range(20)) != draws(8, range(20))
    assert len(set(draws(7, range(20)))) > 10  # the step changes the draw too


def test_noise_is_strictly_inside_zero_one():
    u = uniform_noise(row_keys(0, 64), 3, 500)
    assert u.shape == (64, 500)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_sampling_follows_the_softmax(temperature):
    # Gumbel-max must sample exactly from softmax(logits / temperature): compare frequencies
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    want = (probs.log() / temperature).softmax(-1)
    n = 40000
    draws = sample_next(probs.log().expand(n, -1), SamplingConfig(temperature=temperature), row_keys(123, n), 0)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert torch.allclose(freq, want, atol=4 * math.sqrt(0.25 / n) + 1e-3), (freq, want)


def test_sampling_never_leaves_the_nucleus():
    probs = torch.tensor([[0.45, 0.3, 0.15, 0.06, 0.04]])
    cfg = SamplingConfig(temperature=1.0, top_p=0.8)
    draws = sample_next(probs.log().expand(2000, -1), cfg, row_keys(0, 2000), 0).tolist()
    assert set(draws) == {0, 1, 2}  # 0.45 + 0.3 < 0.8 <= 0.9


def test_unseeded_sampling_still_samples():
    logits = torch.zeros(1, 1000)
    cfg = SamplingConfig(temperature=1.0)
    assert len({int(sample_next(logits, cfg)) for _ in range(10)}) > 1


# ---------------------------------------------------------------- SamplingConfig

@pytest.mark.parametrize("kw, flag", [
    (dict(temperature=-0.1), "--temperature"), (dict(top_k=-1), "--top-k"), (dict(top_p=0.0), "--top-p"),
    (dict(top_p=1.5), "--top-p"), (dict(top_p=-0.5), "--top-p"), (dict(max_new_tokens=0), "--tokens"),
    (dict(repetition_penalty=0.0), "--repetition-penalty"),
])
def test_sampling_config_rejects_bad_values(kw, flag):
    with pytest.raises(UsageError, match=flag):
        SamplingConfig(**kw)


def test_sampling_config_accepts_the_off_values():
    cfg = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=1)
    assert cfg.top_p == 1.0


# ---------------------------------------------------------------- generate

def manual_greedy(model, prompt: torch.Tensor, n: int, vocab: int) -> torch.Tensor:
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq)
            seq = torch.cat([seq, logits[:, -1, :vocab].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("use_cache", [True, False])
def test_temperature_zero_generate_matches_manual_greedy(use_cache):
    model = make_model(seed=2, context_size=32)
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    out = generate(model, prompt, SamplingConfig(max_new_tokens=20, temperature=0.0), vocab_size=40, use_cache=use_cache)
    assert out.shape == (2, 25)
    assert torch.equal(out, manual_greedy(model, prompt, 20, 40))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope"])
def test_cached_and_uncached_decoding_agree_past_the_context(positions):
    # the sliding window re-prefills in strides; cached and uncached paths follow the same policy
    model = make_model(seed=3, positions=positions, context_size=16)
    prompt = torch.randint(0, 40, (1, 20), generator=torch.Generator().manual_seed(1))  # longer than the context
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0)
    a = generate(model, prompt, cfg, 40, use_cache=True, window="slide")
    b = generate(model, prompt, cfg, 40, use_cache=False, window="slide")
    assert a.shape == (1, 60)
    assert torch.equal(a, b)
    cfg = SamplingConfig(max_new_tokens=40, temperature=1.0, top_k=10, seed=5)
    assert torch.equal(generate(model, prompt, cfg, 40, use_cache=True, window="slide"),
                       generate(model, prompt, cfg, 40, use_cache=False, window="slide"))


def test_rolling_window_matches_until_the_context_is_full_then_keeps_going():
    model = make_model(seed=3, positions="rope", context_size=16)
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(2))
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0)
    rolled = generate(model, prompt, cfg, 40, use_cache=True, window="roll")
    assert rolled.shape == (2, 44)
    # while everything fits in the context, the ring and the full forward see the same tokens
    assert torch.equal(rolled[:, :17], manual_greedy(model, prompt, 13, 40))
    assert torch.equal(generate(model, prompt, cfg, 40, use_cache=True, window="auto"), rolled)  # auto = roll for RoPE


def test_roll_needs_rope():
    assert resolve_window("auto", "learned") == "slide" and resolve_window("auto", "rope") == "roll"
    with pytest.raises(UsageError, match="RoPE"):
        resolve_window("roll", "learned")
    with pytest.raises(UsageError, match="--window"):
        resolve_window("sideways", "rope")


def test_batch_row_b_equals_seed_plus_b_alone():
    model = make_model(seed=6)
    prompt = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(3))
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=100)
    batch = generate(model, prompt.expand(3, -1), cfg, 40)
    for b in range(3):
        alone = generate(model, prompt, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=100 + b), 40)
        assert torch.equal(batch[b], alone[0])
    assert not torch.equal(batch[0], batch[1])


def test_generate_only_emits_ids_below_vocab_size():
    model = make_model(seed=0)  # padded vocab is 64, the real one 40
    out = generate(model, torch.zeros(4, 1, dtype=torch.long), SamplingConfig(max_new_tokens=50, temperature=2.0, seed=0), 40)
    assert int(out.max()) < 40


def test_seeded_generate_is_reproducible():
    model = make_model(seed=0)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    run = lambda seed: generate(model, prompt, SamplingConfig(max_new_tokens=30, seed=seed), 40)  # noqa: E731
    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


class TableModel(torch.nn.Module):
    """Bigram model from a fixed table: logits of the next token depend only on the last one.
    It has no KV cache (use_cache=False); `wte` and `cfg.positions` only tell the decoder the device
    and the window policy."""

    def __init__(self, table: torch.Tensor, context: int = 64):
        super().__init__()
        self.table = table  # (V, V) log-probabilities
        self.wte = torch.nn.Embedding(1, 1)
        self.cfg = type("Cfg", (), {"context_size": context, "positions": "learned"})()

    def forward(self, idx, targets=None, cache=None, last_only=False):
        logits = self.table[idx]  # (B, T, V)
        return (logits[:, -1:] if last_only else logits), None


def test_generate_stops_each_row_at_eos_and_pads_with_eos():
    V, EOS = 6, 3
    table = torch.full((V, V), -10.0)
    nxt = {0: 4, 4: 5, 5: EOS, 1: 2, 2: 1, EOS: EOS}  # row starting at 0 ends after 3 tokens; row at 1 never
    for a, b in nxt.items():
        table[a, b] = 10.0
    model = TableModel(table)
    seen = []
    out = generate(model, torch.tensor([[0], [1]]), SamplingConfig(max_new_tokens=6, temperature=0.0), V,
                   eos_id=EOS, on_token=lambda t: seen.append(t.tolist()), use_cache=False)
    assert out.tolist() == [[0, 4, 5, 3, 3, 3, 3], [1, 2, 1, 2, 1, 2, 1]]
    assert seen == [[4, 2], [5, 1], [3, 2], [3, 1], [3, 2], [3, 1]]
    # when every row finishes the loop ends early
    out = generate(model, torch.tensor([[0], [4]]), SamplingConfig(max_new_tokens=10, temperature=0.0), V,
                   eos_id=EOS, use_cache=False)
    assert out.tolist() == [[0, 4, 5, 3], [4, 5, 3, 3]]


def test_generate_applies_the_repetition_penalty():
    V = 4
    table = torch.tensor([[1.0, 2.0, 1.5, 0.0]] * V)  # always prefers 1, then 2
    model = TableModel(table)
    plain = generate(model, torch.tensor([[0]]), SamplingConfig(max_new_tokens=3, temperature=0.0), V, use_cache=False)
    assert plain.tolist() == [[0, 1, 1, 1]]
    pen = generate(model, torch.tensor([[0]]), SamplingConfig(max_new_tokens=3, temperature=0.0, repetition_penalty=2.0), V,
                   use_cache=False)
    # after 1 is seen: 2/2 = 1.0 < 1.5 -> 2; after 2 is seen too: 1.0 > 1.5/2 = 0.75 -> 1
    assert pen.tolist() == [[0, 1, 2, 1]]


DECODER_CASES = [("slide", dict(positions="learned")), ("slide", dict(positions="sinusoidal")), ("slide", dict(positions="rope")),
                 ("roll", dict(positions="rope")),
                 ("roll", dict(positions="rope", qk_norm=True, logit_softcap=3.0, activation="swiglu"))]


@pytest.mark.parametrize("window, kw", DECODER_CASES, ids=["learned", "sinusoidal", "rope-slide", "rope-roll", "rope-roll-qknorm-softcap"])
def test_decoder_static_cache_logits_match_full_forward_across_the_context(window, kw):
    # the decoding engine's own forward (static KV cache, position as a tensor) against GPT.forward
    model = make_model(seed=9, context_size=16, **kw)
    seq = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = model(seq)  # (B, T, V) reference
    dec = Decoder(model, 2, 40, use_cache=True, window=window)
    with torch.inference_mode():
        got = [dec.prefill(seq[:, :3])]
        got += [dec.step(seq[:, :t + 1]) for t in range(3, 16)]
    for i, logits in enumerate(got):
        torch.testing.assert_close(logits, full[:, i + 2, :40], rtol=0, atol=1e-5, msg=f"position {i + 2}")
