"""Beam search against brute-force enumeration on hand-made bigram models, plus the real GPT
(cached and uncached decoding must agree)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import make_model
from tinylm.util.errors import UsageError
from tinylm.generate.beam import beam_search
from tinylm.generate.engine import SamplingConfig, generate


class MinimalTableModel(torch.nn.Module):
    """A fake model whose next-token log-probabilities depend only on the last token, read from a
    fixed (V, V) table. It offers only what a cache-less decoder needs: `cfg.context_size` and
    `forward(idx, targets=None, cache=None, last_only=False) -> (logits, None)`; so beam search
    must run with use_cache=False."""

    def __init__(self, table: torch.Tensor, context: int = 64):
        super().__init__()
        self.table = table.log_softmax(dim=-1)  # (V, V): row = previous token
        self.cfg = type("Cfg", (), {"context_size": context})()

    def forward(self, idx, targets=None, cache=None, last_only=False):
        assert cache is None
        logits = self.table[idx]  # (B, T, V)
        return (logits[:, -1:] if last_only else logits), None

    def logp(self, prev: int, tok: int) -> float:
        return float(self.table[prev, tok])


class TableModel(MinimalTableModel):
    """The same, plus the two attributes the current Decoder reads even without a cache: `wte`
    (for the device) and `cfg.positions` (for the window policy). See
    test_beam_search_needs_only_forward_and_context_size for why this subclass exists."""

    def __init__(self, table: torch.Tensor, context: int = 64):
        super().__init__(table, context)
        self.wte = torch.nn.Embedding(1, 1)
        self.cfg.positions = "learned"


def brute_force(model: TableModel, prompt: list[int], n: int, V: int, eos: int | None = None,
                length_penalty: float = 1.0) -> list[int]:
    """Best continuation by enumerating every sequence: those of length n without EOS, and those
    that end at their first EOS; score = summed log-prob / (generated length ** length_penalty)."""
    best, best_seq = -math.inf, None
    for toks in itertools.product(range(V), repeat=n):
        if eos is not None and eos in toks:
            toks = toks[:toks.index(eos) + 1]
        seq = list(prompt) + list(toks)
        s = sum(model.logp(seq[i - 1], seq[i]) for i in range(len(prompt), len(seq)))
        s /= len(toks) ** length_penalty
        if s > best + 1e-9:
            best, best_seq = s, seq
    return best_seq


def greedy_table() -> TableModel:
    """Greedy takes 1 (p=0.5) and then faces a flat distribution; 2 (p=0.4) leads to a 0.9 chain."""
    p = torch.tensor([
        [0.001, 0.5, 0.4, 0.099],  # after 0 (the prompt)
        [0.25, 0.25, 0.25, 0.25],  # after 1: flat
        [0.033, 0.034, 0.9, 0.033],  # after 2: 2 again, very likely
        [0.25, 0.25, 0.25, 0.25],
    ])
    return TableModel(p.log())


def test_hand_made_table_has_greedy_suboptimal():
    model = greedy_table()
    greedy = generate(model, torch.tensor([[0]]), SamplingConfig(max_new_tokens=3, temperature=0.0), 4, use_cache=False)
    best = brute_force(model, [0], 3, 4)
    assert best == [0, 2, 2, 2]
    assert greedy[0].tolist()[:2] == [0, 1]  # greedy is not on the best path


def test_beam_search_needs_only_forward_and_context_size():
    # the cache-less path must not need anything of the model but its forward and context size
    p = torch.tensor([[0.001, 0.5, 0.4, 0.099], [0.25] * 4, [0.033, 0.034, 0.9, 0.033], [0.25] * 4])
    model = MinimalTableModel(p.log())
    got = beam_search(model, torch.tensor([[0]]), 4, beam_width=2, max_new_tokens=3, use_cache=False)
    assert got == [0, 2, 2, 2]
    out = generate(model, torch.tensor([[0]]), SamplingConfig(max_new_tokens=3, temperature=0.0), 4, use_cache=False)
    assert out[0].tolist()[:2] == [0, 1]


@pytest.mark.parametrize("width", [2, 3, 4])
def test_beam_finds_the_best_sequence_greedy_misses(width):
    model = greedy_table()
    for n in (2, 3, 4):
        assert beam_search(model, torch.tensor([[0]]), 4, beam_width=width, max_new_tokens=n, use_cache=False) \
            == brute_force(model, [0], n, 4) == [0] + [2] * n


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_equals_brute_force_on_random_tables(seed):
    V, n = 4, 4
    model = TableModel(torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * 2)
    prompt = [seed % V, (seed + 1) % V]
    got = beam_search(model, torch.tensor([prompt]), V, beam_width=V ** n, max_new_tokens=n, use_cache=False)
    assert got == brute_force(model, prompt, n, V)


@pytest.mark.parametrize("seed", range(6))
def test_wide_beam_with_eos_equals_brute_force(seed):
    # with length_penalty 0 scores are plain log-probs, so stopping once a finished beam beats
    # every live one is exact and a wide beam must find the enumerated optimum
    V, n, eos = 4, 4, 3
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(100 + seed)) * 2
    table[:, eos] += 1.0  # make ending tempting
    model = TableModel(table)
    got = beam_search(model, torch.tensor([[0]]), V, beam_width=V ** n, max_new_tokens=n, eos_id=eos,
                      length_penalty=0.0, use_cache=False)
    assert got == brute_force(model, [0], n, V, eos=eos, length_penalty=0.0)
    assert eos not in got[1:-1]  # nothing grows after an EOS


def eos_table() -> TableModel:
    # after the prompt: EOS 0.6, token 1 0.4; after 1: 1 again with 0.99
    p = torch.tensor([
        [1e-6, 0.4, 1e-6, 0.6],
        [0.0033, 0.99, 0.0034, 0.0033],
        [0.25, 0.25, 0.25, 0.25],
        [0.25, 0.25, 0.25, 0.25],
    ])
    return TableModel(p.log())


def test_eos_ends_a_beam_when_that_is_best():
    model = eos_table()
    got = beam_search(model, torch.tensor([[0]]), 4, beam_width=2, max_new_tokens=3, eos_id=3, length_penalty=0.0, use_cache=False)
    assert got == brute_force(model, [0], 3, 4, eos=3, length_penalty=0.0) == [0, 3]


def test_length_penalty_prefers_the_longer_sequence():
    # per-token average: [EOS] = log 0.6 = -0.51 < [1, 1, 1] = (log 0.4 + 2 log 0.99) / 3 = -0.31
    model = eos_table()
    got = beam_search(model, torch.tensor([[0]]), 4, beam_width=2, max_new_tokens=3, eos_id=3, length_penalty=1.0, use_cache=False)
    assert got == brute_force(model, [0], 3, 4, eos=3, length_penalty=1.0) == [0, 1, 1, 1]


def test_without_eos_id_eos_is_an_ordinary_token():
    model = eos_table()
    got = beam_search(model, torch.tensor([[0]]), 4, beam_width=4, max_new_tokens=2, eos_id=None, use_cache=False)
    assert got == brute_force(model, [0], 2, 4) and len(got) == 3


@pytest.mark.parametrize("seed", range(4))
def test_beam_width_one_is_greedy(seed):
    V = 5
    model = TableModel(torch.randn(V, V, generator=torch.Generator().manual_seed(seed)))
    prompt = torch.tensor([[seed % V]])
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0), V, use_cache=False)
    assert beam_search(model, prompt, V, beam_width=1, max_new_tokens=8, use_cache=False) == greedy[0].tolist()


@pytest.mark.parametrize("seed", range(8))
def test_beam_width_one_is_greedy_with_eos_on_random_tables(seed):
    # an EOS that is not the single best candidate must not end the width-1 search
    V, eos = 5, 3
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(50 + seed))
    table[:, eos] += 0.8
    model = TableModel(table)
    prompt = torch.tensor([[seed % V]])
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0), V, eos_id=eos, use_cache=False)
    greedy = greedy[0].tolist()
    if eos in greedy[1:]:
        greedy = greedy[:greedy.index(eos, 1) + 1]
    assert beam_search(model, prompt, V, beam_width=1, max_new_tokens=8, eos_id=eos, use_cache=False) == greedy


def test_beam_width_one_is_greedy_with_eos():
    model = eos_table()
    greedy = generate(model, torch.tensor([[0]]), SamplingConfig(max_new_tokens=5, temperature=0.0), 4, eos_id=3, use_cache=False)
    assert greedy[0].tolist() == [0, 3]
    assert beam_search(model, torch.tensor([[0]]), 4, beam_width=1, max_new_tokens=5, eos_id=3, use_cache=False) == [0, 3]


def test_beam_search_sliding_past_the_context_of_a_fake_model():
    model = greedy_table()
    model.cfg.context_size = 4
    got = beam_search(model, torch.tensor([[0]]), 4, beam_width=3, max_new_tokens=10, use_cache=False)
    assert got == [0] + [2] * 10


@pytest.mark.parametrize("kw", [dict(beam_width=0), dict(max_new_tokens=0)])
def test_beam_search_rejects_bad_arguments(kw):
    model = greedy_table()
    args = dict(beam_width=2, max_new_tokens=3, use_cache=False)
    args.update(kw)
    with pytest.raises(UsageError):
        beam_search(model, torch.tensor([[0]]), 4, **args)


# ---------------------------------------------------------------- the real model

@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("seed", [0, 1])
def test_real_model_beam_cached_equals_uncached_past_the_context(positions, seed):
    # with the sliding window, the cached and uncached paths must see the same tokens
    model = make_model(seed=7, positions=positions, context_size=16)
    prompt = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(seed))
    a = beam_search(model, prompt, 40, beam_width=3, max_new_tokens=30, eos_id=3, use_cache=True, window="slide")
    b = beam_search(model, prompt, 40, beam_width=3, max_new_tokens=30, eos_id=3, use_cache=False, window="slide")
    assert a == b
    assert a[:10] == prompt[0].tolist()


def test_real_model_beam_one_equals_greedy():
    model = make_model(seed=8)
    prompt = torch.randint(0, 40, (1, 4), generator=torch.Generator().manual_seed(1))
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=12, temperature=0.0), 40)
    assert beam_search(model, prompt, 40, beam_width=1, max_new_tokens=12) == greedy[0].tolist()


def test_early_stop_returns_a_finished_hypothesis_not_a_stale_live_beam():
    # After the prompt: 1 (0.6) or 2 (0.4); after either, EOS is the most likely (0.5). Two steps in,
    # enough beams have finished to stop early; the result must be one of the hypotheses beam
    # search scored (ended by EOS, or of full length), and with a wide enough beam the best one.
    p = torch.tensor([
        [1e-6, 0.6, 0.4, 1e-6],
        [0.2, 0.15, 0.15, 0.5],
        [0.2, 0.15, 0.15, 0.5],
        [0.25, 0.25, 0.25, 0.25],
    ])
    model = TableModel(p.log())
    got = beam_search(model, torch.tensor([[0]]), 4, beam_width=2, max_new_tokens=3, eos_id=3, use_cache=False)
    assert got[-1] == 3 or len(got) == 4, f"{got} neither ends with EOS nor has 3 new tokens"
    assert got == brute_force(model, [0], 3, 4, eos=3, length_penalty=1.0)
