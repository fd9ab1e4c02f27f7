"""Text generation: pure sampling functions over logits, the decoding loop, and beam search.

The engine knows nothing about tokenization, only token ids: the caller encodes the prompt and
decodes what comes back (streaming gets each new id through a callback).

Window policy: a model attends over at most `context_size` tokens. When the sequence outgrows
that, the window slides forward by `slide` tokens at once (a quarter of the context by default)
and the kept tokens are re-prefilled in one pass. Sliding by one token every step (seed 004)
would force a full recompute per token with learned or sinusoidal positions, since every
cached key would change position; sliding in strides keeps the KV cache valid between slides.
The uncached path follows the same policy, so both give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import UsageError


@dataclass
class SamplingConfig:
    max_new_tokens: int = 500
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off; else keep the k most likely tokens
    top_p: float = 1.0  # 1 = off; else keep the smallest set with cumulative probability >= p
    repetition_penalty: float = 1.0  # 1 = off; >1 makes already-generated tokens less likely
    seed: int | None = None  # None = not reproducible

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"--tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UsageError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")


# ---------------------------------------------------------------- pure functions on logits (B, V)

def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set all but the k largest logits of each row to -inf. k <= 0 or k >= V: unchanged.
    Ties at the k-th value are all kept. Example: [1, 3, 2, 0], k=2 -> [-inf, 3, 2, -inf]."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability sums to >= p, -inf elsewhere. The most likely token is always kept.
    Example: probs [0.5, 0.3, 0.2], p=0.7 -> keeps the first two (0.5 < 0.7 <= 0.8)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(dim=-1)
    # subtle: drop a token when the mass *before* it already reaches p, so the token that crosses
    # p is kept; comparing the inclusive cumsum would drop it.
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p  # (B, V)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def repetition_filter(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019): logits of tokens in `seen` (B, S) are divided
    by `penalty` when positive and multiplied when negative."""
    if penalty == 1.0:
        return logits
    picked = logits.gather(-1, seen)  # (B, S)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,): greedy when temperature is 0, else filtered sampling."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits.float() / cfg.temperature, cfg.top_k), cfg.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------- the decoding loop

class Decoder:
    """Feeds a growing sequence to the model and returns next-token logits (B, V), keeping the KV
    cache (if used) in step with the window policy in the module docstring."""

    def __init__(self, model, vocab_size: int, use_cache: bool = True, slide: int = 0):
        self.model, self.vocab_size, self.use_cache = model, vocab_size, use_cache
        self.ctx = model.cfg.context_size
        self.slide = slide or max(1, self.ctx // 4)
        self.start = 0  # index in the full sequence where the current window begins
        self.cache = None

    @torch.no_grad()
    def prefill(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, T): the whole sequence so far. A prompt longer than the context keeps its last
        `context_size` tokens (seed 004's sliding window)."""
        self.start = max(0, seq.size(1) - self.ctx)
        return self._run_window(seq)

    @torch.no_grad()
    def step(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, T): the sequence including the token just appended."""
        if seq.size(1) - self.start > self.ctx:  # window full: slide and re-prefill
            self.start = seq.size(1) - (self.ctx - self.slide)
            return self._run_window(seq)
        if not self.use_cache:
            return self._run_window(seq)
        logits, _ = self.model(seq[:, -1:], cache=self.cache)  # (B, 1, V)
        return logits[:, -1, : self.vocab_size]

    def _run_window(self, seq: torch.Tensor) -> torch.Tensor:
        window = seq[:, self.start:]  # (B, <= ctx)
        if self.use_cache:
            self.cache = self.model.new_cache(seq.size(0))
        logits, _ = self.model(window, cache=self.cache, last_only=True)  # (B, 1, V)
        return logits[:, -1, : self.vocab_size]

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


@torch.no_grad()
def generate(model, prompt: torch.Tensor, cfg: SamplingConfig, vocab_size: int, eos_id: int | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None, use_cache: bool = True) -> torch.Tensor:
    """prompt (B, T0) ids -> (B, T0 + n) ids. Each row stops at its own EOS (later positions of a
    finished row are filled with EOS); the loop ends when every row has finished or after
    cfg.max_new_tokens. on_token receives each step's new ids (B,) as they are produced."""
    model.eval()
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=prompt.device).manual_seed(cfg.seed)
    dec = Decoder(model, vocab_size, use_cache)
    seq = prompt
    logits = dec.prefill(seq)
    done = torch.zeros(prompt.size(0), dtype=torch.bool, device=prompt.device)
    for i in range(cfg.max_new_tokens):
        logits = repetition_filter(logits, seq, cfg.repetition_penalty)
        nxt = sample_next(logits, cfg, gen)  # (B,)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done = done | (nxt == eos_id)
        seq = torch.cat([seq, nxt[:, None]], dim=1)  # (B, T + 1)
        if on_token is not None:
            on_token(nxt)
        if i + 1 == cfg.max_new_tokens or (eos_id is not None and bool(done.all())):
            break
        logits = dec.step(seq)
    return seq


@torch.no_grad()
def beam_search(model, prompt: torch.Tensor, vocab_size: int, beam_width: int = 4, max_new_tokens: int = 100,
                eos_id: int | None = None, length_penalty: float = 1.0, use_cache: bool = True) -> list[int]:
    """Return the most likely continuation of prompt (1, T0) found with `beam_width` beams, as the
    full id list (prompt included). Scores are summed log-probabilities divided by
    (generated length ** length_penalty); a beam that emits EOS is finished and stops growing."""
    if beam_width < 1:
        raise UsageError(f"--beams must be at least 1, got {beam_width}")
    if max_new_tokens < 1:
        raise UsageError(f"--tokens must be at least 1, got {max_new_tokens}")
    model.eval()
    dec = Decoder(model, vocab_size, use_cache)
    seq = prompt[:1]  # (1, T0): one live beam to start
    scores = torch.zeros(1, device=prompt.device)  # (W,) summed log-probs of live beams
    logits = dec.prefill(seq)
    finished: list[tuple[float, list[int]]] = []  # (normalised score, ids)
    for step in range(1, max_new_tokens + 1):
        logp = F.log_softmax(logits.float(), dim=-1)  # (W, V)
        cand = (scores[:, None] + logp).view(-1)  # (W * V,)
        top_scores, top_idx = cand.topk(min(2 * beam_width, cand.numel()))
        parents, tokens = top_idx // vocab_size, top_idx % vocab_size
        keep_parent, keep_tok, keep_score = [], [], []
        for s, p, t in zip(top_scores.tolist(), parents.tolist(), tokens.tolist()):
            if eos_id is not None and t == eos_id:
                finished.append((s / step ** length_penalty, seq[p].tolist() + [t]))
            else:
                keep_parent.append(p), keep_tok.append(t), keep_score.append(s)
            if len(keep_parent) == beam_width:
                break
        best_live = max(keep_score) / step ** length_penalty if keep_score else float("-inf")
        if not keep_parent or (len(finished) >= beam_width and max(f[0] for f in finished) >= best_live):
            break
        index = torch.tensor(keep_parent, device=prompt.device)
        seq = torch.cat([seq[index], torch.tensor(keep_tok, device=prompt.device)[:, None]], dim=1)  # (W, T + 1)
        scores = torch.tensor(keep_score, device=prompt.device)
        if step == max_new_tokens:
            break
        dec.reorder(index)
        logits = dec.step(seq)
    n = seq.size(1) - prompt.size(1)
    finished += [(s / max(n, 1) ** length_penalty, seq[i].tolist()) for i, s in enumerate(scores.tolist())]
    return max(finished, key=lambda f: f[0])[1]
