"""Sampling: the pure filters, the counter-based noise and its distribution, several samples in
one batch (each exactly what its seed gives alone), EOS per sample, reproducibility, and the
validation of bad settings."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from tinylm.util.errors import UsageError
from tinylm.generate.beam import beam_search
from tinylm.generate.engine import (Engine, SamplingConfig, generate, repetition_filter, row_keys, sample_next,
                             top_k_filter, top_p_filter, uniform_noise)

V = 40
NEG = float("-inf")


def prompt_ids(B: int, T: int = 4, seed: int = 0) -> torch.Tensor:
    row = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(seed))
    return row.expand(B, T).contiguous()


# ---------------------------------------------------------------- pure functions

def test_filters_on_worked_examples():
    assert top_k_filter(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2).tolist() == [[NEG, 3.0, 2.0, NEG]]
    assert top_k_filter(torch.tensor([[1.0, 3.0]]), 0).tolist() == [[1.0, 3.0]]
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    assert torch.isinf(top_p_filter(probs.log(), 0.7)).tolist() == [[False, False, True]]
    assert torch.isinf(top_p_filter(probs.log(), 0.5)).tolist() == [[False, True, True]]
    seen = torch.tensor([[True, True, False]])
    assert repetition_filter(torch.tensor([[2.0, -1.0, 3.0]]), seen, 2.0).tolist() == [[1.0, -2.0, 3.0]]


def test_noise_is_a_pure_function_of_key_step_and_token():
    keys = row_keys(7, 3)
    u = uniform_noise(keys, 5, 1000)
    assert u.shape == (3, 1000) and (u > 0).all() and (u < 1).all()
    assert torch.equal(u, uniform_noise(keys, 5, 1000))
    assert torch.equal(u[1:], uniform_noise(row_keys(8, 2), 5, 1000))  # row b of seed s == row 0 of seed s + b
    assert not torch.equal(u, uniform_noise(keys, 6, 1000))
    assert abs(u.mean().item() - 0.5) < 0.02
    assert row_keys(2**70 + 3, 1).shape == (1,) and row_keys(-5, 2).shape == (2,)  # any Python int


def test_gumbel_sampling_follows_the_softmax_and_respects_the_filters():
    n = 20000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).expand(n, 5)
    keys = row_keys(123, n)
    ids = sample_next(logits, SamplingConfig(temperature=1.0), keys, 0)
    freq = torch.bincount(ids, minlength=5).float() / n
    torch.testing.assert_close(freq, logits[0].softmax(-1), rtol=0, atol=0.015)
    hot = sample_next(logits, SamplingConfig(temperature=0.5), keys, 0)
    torch.testing.assert_close(torch.bincount(hot, minlength=5).float() / n, (logits[0] / 0.5).softmax(-1), rtol=0, atol=0.015)
    assert set(sample_next(logits, SamplingConfig(top_k=2), keys, 1).tolist()) == {0, 1}
    assert set(sample_next(logits, SamplingConfig(top_p=0.6), keys, 2).tolist()) == {0, 1}
    assert sample_next(logits[:3], SamplingConfig(temperature=0), keys[:3]).tolist() == [0, 0, 0]


# ---------------------------------------------------------------- batches

SETTINGS = [SamplingConfig(max_new_tokens=40, temperature=1.0, seed=11),
            SamplingConfig(max_new_tokens=40, temperature=0.8, top_k=8, top_p=0.9, repetition_penalty=1.3, seed=5),
            SamplingConfig(max_new_tokens=40, temperature=0)]


@pytest.mark.parametrize("cfg", SETTINGS, ids=["plain", "filtered", "greedy"])
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_each_sample_of_a_batch_is_what_its_seed_gives_alone(cfg, positions):
    model = make_model(seed=1, positions=positions)
    batch = generate(model, prompt_ids(4), cfg, V, eos_id=7)
    for b in range(4):
        seed = None if cfg.seed is None else cfg.seed + b
        alone = generate(model, prompt_ids(1), SamplingConfig(**{**vars(cfg), "seed": seed}), V, eos_id=7)[0].tolist()
        row = batch[b].tolist()
        assert row[:len(alone)] == alone
        assert all(t == 7 for t in row[len(alone):])  # a row that ended early is padded with EOS
    if cfg.temperature > 0:
        assert len({tuple(r) for r in batch.tolist()}) > 1  # the samples differ


def test_same_seed_same_text_other_seed_other_text():
    model = make_model(seed=2)
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=3)
    a = generate(model, prompt_ids(2), cfg, V)
    assert torch.equal(a, generate(model, prompt_ids(2), cfg, V))
    assert not torch.equal(a, generate(model, prompt_ids(2), SamplingConfig(max_new_tokens=30, temperature=1.0, seed=4), V))
    unseeded = SamplingConfig(max_new_tokens=30, temperature=1.0)
    assert not torch.equal(generate(model, prompt_ids(1), unseeded, V), generate(model, prompt_ids(1), unseeded, V))


def test_eos_stops_only_its_own_sample_and_the_result_ends_with_the_last_one():
    model = make_model(seed=3)
    cfg = SamplingConfig(max_new_tokens=60, temperature=1.0, seed=0)
    free = generate(model, prompt_ids(6), cfg, V)[:, 4:]  # no EOS: every row runs 60 tokens
    eos = int(free[0, 5])  # a token row 0 emits early
    firsts = [row.index(eos) if eos in row else None for row in free.tolist()]
    assert any(f is None or f > firsts[0] for f in firsts)  # some row goes on past row 0's EOS
    out = generate(model, prompt_ids(6), cfg, V, eos_id=eos)[:, 4:]
    ends = [60 if f is None else f + 1 for f in firsts]
    assert out.size(1) == max(ends)
    for b, (row, end) in enumerate(zip(out.tolist(), ends)):
        assert row[:end] == free[b, :end].tolist()  # identical up to its own EOS...
        assert all(t == eos for t in row[end:])  # ...then only EOS


def test_checking_for_finished_rows_rarely_gives_the_same_result_as_every_step():
    model = make_model(seed=4)
    cfg = SamplingConfig(max_new_tokens=50, temperature=1.0, seed=9)
    eos = int(generate(model, prompt_ids(1), cfg, V)[0, 6])
    every = Engine(model, 3, V, cfg, eos_id=eos, sync_every=1)(prompt_ids(3))
    rarely = Engine(model, 3, V, cfg, eos_id=eos, sync_every=32)(prompt_ids(3))
    assert torch.equal(every, rarely)


def test_on_token_can_finish_rows_and_an_engine_can_be_reused():
    model = make_model(seed=5)
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=1)
    engine = Engine(model, 2, V, cfg, eos_id=None)
    full = engine(prompt_ids(2))
    seen = []

    def stop_row0_after_3(tok):
        seen.append(tok.tolist())
        return [len(seen) >= 3, False]

    cut = engine(prompt_ids(2), stop_row0_after_3)
    assert torch.equal(cut[1], full[1]) and len(seen) == 30
    assert cut[0, :7].tolist() == full[0, :7].tolist() and (cut[0, 7:] == 0).all()  # filled with 0 (no EOS)
    assert torch.equal(engine(prompt_ids(2)), full)  # reuse: the same result again


def test_repetition_penalty_counts_the_prompt_and_changes_greedy_output():
    model = make_model(seed=6)
    plain = generate(model, prompt_ids(1), SamplingConfig(max_new_tokens=20, temperature=0), V)[0, 4:].tolist()
    penal = generate(model, prompt_ids(1), SamplingConfig(max_new_tokens=20, temperature=0, repetition_penalty=5.0), V)[0, 4:]
    assert len(set(plain)) < len(set(penal.tolist()))  # the random model repeats itself; the penalty breaks that


# ---------------------------------------------------------------- bad settings

@pytest.mark.parametrize("kw, flag", [(dict(max_new_tokens=0), "--tokens"), (dict(max_new_tokens=-3), "--tokens"),
                                      (dict(temperature=-0.1), "--temperature"), (dict(top_k=-1), "--top-k"),
                                      (dict(top_p=0.0), "--top-p"), (dict(top_p=1.5), "--top-p"),
                                      (dict(repetition_penalty=0.0), "--repetition-penalty")])
def test_bad_sampling_settings_are_usage_errors_that_name_the_flag(kw, flag):
    with pytest.raises(UsageError, match=flag):
        SamplingConfig(**kw)


def test_bad_engine_settings_are_usage_errors():
    model = make_model()
    cfg = SamplingConfig(max_new_tokens=5)
    with pytest.raises(UsageError, match="--beams"):
        beam_search(model, prompt_ids(1), V, beam_width=0)
    with pytest.raises(UsageError, match="--decode"):
        Engine(model, 1, V, cfg, decode="fast")
    with pytest.raises(UsageError, match="--window roll needs a RoPE"):
        Engine(model, 1, V, cfg, window="roll")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="needs a CUDA device"):
            Engine(model, 1, V, cfg, decode="graph")


def test_generating_leaves_the_model_trainable_with_unchanged_values():
    model = make_model(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():  # even from inside inference mode
        generate(model, prompt_ids(1), SamplingConfig(max_new_tokens=5), V)
    out = generate(model, prompt_ids(1), SamplingConfig(max_new_tokens=5), V)
    out[0, 0] = 1  # the ids are an ordinary tensor
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()
    _, loss = model(prompt_ids(2, 8), prompt_ids(2, 8, seed=1))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
