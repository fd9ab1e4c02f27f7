"""Cached decoding against full recomputation (the reference): logits at every step, inside the
context and across its boundary (slide for every position scheme, roll for RoPE), greedy tokens
with and without the cache, beam search (width 1 = greedy; a wide beam = exhaustive search), and
on CUDA the recorded (graph / compiled) step against the eager one."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model
from tinylm.generate.beam import beam_search
from tinylm.generate.engine import Decoder, Engine, SamplingConfig, generate
from tinylm.kernels.compiled import attend_written_out, store_by_index
from tinylm.model.kv_cache import KVCache
from tinylm.model.gpt import POSITIONS
from tinylm.model.positions import apply_rope, rope_tables

V = 40  # tiny_config's vocabulary
VARIANTS = [dict(positions=p) for p in POSITIONS] + [
    dict(qk_norm=True, logit_softcap=5.0), dict(activation="swiglu", bias=False, tie_weights=False),
    dict(positions="rope", qk_norm=True, activation="relu2")]
IDS = ["-".join(f"{k}={v}" for k, v in v.items()) for v in VARIANTS]


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_static_cache_logits_match_the_full_forward_at_every_step(variant):
    model = make_model(seed=3, **variant)
    T = model.cfg.context_size
    idx = tokens(2, T)
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V) reference
        dec = Decoder(model, 2, V, window="slide")
        torch.testing.assert_close(dec.prefill(idx[:, :5]), full[:, 4, :V], rtol=0, atol=1e-5)
        for n in range(6, T + 1):
            torch.testing.assert_close(dec.step(idx[:, :n]), full[:, n - 1, :V], rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("slide", [0, 5])
def test_sliding_window_cached_logits_match_recomputation_across_the_context_boundary(positions, slide):
    model = make_model(seed=4, positions=positions)  # context 16; 60 tokens slide several times
    idx = tokens(2, 60, seed=1)
    with torch.no_grad():
        cached = Decoder(model, 2, V, use_cache=True, window="slide", slide=slide)
        full = Decoder(model, 2, V, use_cache=False, slide=slide)
        torch.testing.assert_close(cached.prefill(idx[:, :3]), full.prefill(idx[:, :3]), rtol=0, atol=1e-5)
        for n in range(4, 61):
            torch.testing.assert_close(cached.step(idx[:, :n]), full.step(idx[:, :n]), rtol=0, atol=1e-5)
        assert cached.start == full.start > 0


def banded_reference(model, idx: torch.Tensor, window: int) -> torch.Tensor:
    """Logits (B, T, V) of the whole sequence when every query sees only the last `window` keys
    (itself included), RoPE at absolute positions: what a rolling cache of `window` slots computes."""
    cfg = model.cfg
    B, T = idx.shape
    C, nh, hs = cfg.n_embd, cfg.n_head, cfg.head_size
    cos, sin = rope_tables(T, hs, cfg.rope_base)
    i = torch.arange(T)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)  # (T, T)
    x = model.wte(idx)
    for block in model.blocks:
        att = block.attn
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in att.qkv(block.ln1(x)).split(C, dim=2))
        if att.qk_norm:
            q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=band)  # (B, nh, T, hs)
        x = x + att.proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + block.mlp(block.ln2(x))
    return model.lm_head(model.ln_f(x))[..., :V]


@pytest.mark.parametrize("variant", [dict(), dict(qk_norm=True, logit_softcap=4.0)], ids=["rope", "rope-qknorm-softcap"])
def test_rolling_rope_cache_matches_banded_attention_far_past_the_context(variant):
    model = make_model(seed=5, positions="rope", **variant)
    ctx = model.cfg.context_size
    idx = tokens(2, 4 * ctx, seed=2)
    with torch.no_grad():
        ref = banded_reference(model, idx, ctx)
        if model.cfg.logit_softcap:
            ref = model.cfg.logit_softcap * torch.tanh(ref / model.cfg.logit_softcap)
        dec = Decoder(model, 2, V, window="roll")
        assert dec.rolling
        torch.testing.assert_close(dec.prefill(idx[:, :6]), ref[:, 5], rtol=0, atol=1e-5)
        for n in range(7, idx.size(1) + 1):
            torch.testing.assert_close(dec.step(idx[:, :n]), ref[:, n - 1], rtol=0, atol=1e-5)


def test_rolling_cache_with_a_prompt_longer_than_the_context_keeps_its_last_tokens():
    model = make_model(seed=6, positions="rope")
    ctx = model.cfg.context_size
    idx = tokens(1, ctx + 7, seed=3)
    with torch.no_grad():
        dec = Decoder(model, 1, V, window="roll")
        got = dec.prefill(idx)
        ref, _ = model(idx[:, -ctx:])
    torch.testing.assert_close(got, ref[:, -1, :V], rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions", POSITIONS)
def test_greedy_tokens_are_identical_with_and_without_the_cache(positions):
    model = make_model(seed=7, positions=positions)
    prompt = tokens(2, 4, seed=4)
    cfg = SamplingConfig(max_new_tokens=50, temperature=0)  # crosses the context (16) several times
    with_cache = generate(model, prompt, cfg, V, window="slide")
    without = generate(model, prompt, cfg, V, use_cache=False)
    assert with_cache.shape == (2, 54)
    assert torch.equal(with_cache, without)


def test_static_mode_decoding_matches_gpt_forward_for_a_prefix_and_the_prefix_mode_cache_still_works():
    model = make_model(seed=8)
    idx = tokens(3, 9, seed=5)
    with torch.no_grad():
        full, _ = model(idx)
        dec = Decoder(model, 3, model.cfg.padded_vocab)  # the decoder's static-mode forward, all logits
        got = dec.logits_at(idx, torch.arange(9))
        torch.testing.assert_close(got, full[:, -1], rtol=0, atol=1e-5)
        cache = model.new_cache(3)  # GPT.forward's own path (prefix mode)
        model(idx[:, :4], cache=cache)
        step, _ = model(idx[:, 4:], cache=cache)
        torch.testing.assert_close(step, full[:, 4:], rtol=0, atol=1e-5)


def test_static_mask_and_rolling_slots():
    cache = KVCache(1, 1, 1, 4, 2, rolling=True)
    cache.set_positions(torch.tensor([1, 2]))
    assert cache.slots.tolist() == [1, 2]
    assert (cache.mask == 0).tolist() == [[True, True, False, False], [True, True, True, False]]
    cache.set_positions(torch.tensor([9]))  # past the ring: slot 9 % 4, every slot visible
    assert cache.slots.tolist() == [1] and (cache.mask == 0).all()


# ---------------------------------------------------------------- beam search

@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_beam_search_of_width_one_is_greedy(positions):
    model = make_model(seed=9, positions=positions)
    prompt = tokens(1, 3, seed=17)
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=40, temperature=0), V)[0].tolist()
    assert beam_search(model, prompt, V, beam_width=1, max_new_tokens=40) == greedy
    gen = greedy[3:]  # as EOS take the latest newcomer among greedy's tokens: both must stop there, EOS included
    eos = gen[max(i for i in range(len(gen)) if gen[i] not in gen[:i])]
    greedy_eos = generate(model, prompt, SamplingConfig(max_new_tokens=40, temperature=0), V, eos_id=eos)[0].tolist()
    assert greedy_eos == greedy[:greedy.index(eos, 3) + 1]
    assert beam_search(model, prompt, V, beam_width=1, max_new_tokens=40, eos_id=eos) == greedy_eos


def test_beam_search_cached_equals_uncached_across_the_context():
    model = make_model(seed=10)
    prompt = tokens(1, 5, seed=7)
    a = beam_search(model, prompt, V, beam_width=3, max_new_tokens=30)
    b = beam_search(model, prompt, V, beam_width=3, max_new_tokens=30, use_cache=False)
    assert a == b and len(a) == 35


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_a_beam_wide_enough_to_be_exhaustive_finds_the_best_normalised_sequence(length_penalty):
    """With 4 tokens (EOS = 3) and 3 steps there are at most 36 candidates per step, so 36 beams
    keep them all: beam search must return the best of all sequences by brute force."""
    vocab, eos, n = 4, 3, 3
    model = make_model(seed=11, vocab_size=vocab)
    prompt = torch.tensor([[0, 1]])
    got = beam_search(model, prompt, vocab, beam_width=36, max_new_tokens=n, eos_id=eos, length_penalty=length_penalty)
    best, best_seq = float("-inf"), None
    with torch.no_grad():
        for length in range(1, n + 1):
            for cont in itertools.product(range(vocab), repeat=length):
                if eos in cont[:-1] or (length < n and cont[-1] != eos):
                    continue  # EOS ends a sequence; without EOS only full-length ones exist
                seq = torch.tensor([[0, 1, *cont]])
                logp = F.log_softmax(model(seq)[0][0, :, :vocab].float(), dim=-1)  # (T, vocab)
                score = sum(logp[1 + i, t].item() for i, t in enumerate(cont)) / length ** length_penalty
                if score > best:
                    best, best_seq = score, seq[0].tolist()
    assert got == best_seq


# ---------------------------------------------------------------- CUDA: recorded step == eager step

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("decode", ["graph", "compile"])
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cuda_graph_decoding_gives_the_eager_tokens(decode, positions):
    model = make_model(seed=12, positions=positions).cuda()
    prompt = tokens(3, 4, seed=8).cuda()
    cfgs = [SamplingConfig(max_new_tokens=60, temperature=0)]
    if decode == "graph":  # the graph replays the eager kernels: bit-identical even when sampling.
        # Compiled kernels round differently, so a sampled near-tie may flip: greedy only there.
        cfgs.append(SamplingConfig(max_new_tokens=60, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=1))
    for cfg in cfgs:
        eager = Engine(model, 3, V, cfg, eos_id=5, decode="eager")
        recorded = Engine(model, 3, V, cfg, eos_id=5, decode=decode)
        assert recorded.mode == decode
        want = eager(prompt)
        assert torch.equal(recorded(prompt), want)
        assert torch.equal(recorded(prompt), want)  # a second call replays the same recording


@pytest.mark.parametrize("rolling", [False, True])
def test_compiled_static_store_equals_the_eager_one(rolling):
    # Under --decode compile the static cache stores through an index on the whole buffer and, on the
    # CPU, attends written out (kernels/compiled.py says why); compiled, they must write the same
    # slots and give the same attention as the plain index_copy_ + SDPA eagerly.

    g = torch.Generator().manual_seed(0)
    L, B, nh, S, hs = 3, 2, 2, 8, 4
    caches = [KVCache(L, B, nh, S, hs, rolling=rolling) for _ in range(2)]
    start = torch.randn(L, B, nh, S, hs, generator=g)
    for c in caches:
        c.k.copy_(start), c.v.copy_(-start)
    caches[1].store, caches[1].attend_slots = store_by_index, attend_written_out
    q, k, v = (torch.randn(B, nh, 2, hs, generator=g) for _ in range(3))
    pos = torch.tensor([9, 10]) if rolling else torch.tensor([5, 6])
    for c in caches:
        c.set_positions(pos)
    want = caches[0].attend(1, q, k, v)
    got = torch.compile(caches[1].attend, backend="aot_eager", fullgraph=True)(1, q, k, v)
    # (on the CPU the compiled attention is written out, not SDPA: equal to fp32 rounding)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(caches[1].k, caches[0].k) and torch.equal(caches[1].v, caches[0].v)
    assert not torch.equal(caches[0].k, start)  # the store did happen


def test_compiled_decoding_on_the_cpu_gives_the_eager_tokens():
    # --decode compile on the CPU: inductor's C++ kernels, no CUDA graph; every slot attended (fixed
    # shapes). 30 tokens from a context of 16 cross the window's slide twice.
    model = make_model(seed=21)
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(5))
    cfg = SamplingConfig(max_new_tokens=30, temperature=0)
    eng = Engine(model, 2, 40, cfg, decode="compile")
    assert eng.mode == "compile" and not eng.decoder.track_host
    assert torch.equal(eng(prompt), Engine(model, 2, 40, cfg, decode="eager")(prompt))
