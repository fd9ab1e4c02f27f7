"""Pure sampling functions over next-token logits (B, V), and the sampling settings.

Owns: `SamplingConfig` (validated), the top-k / top-p / repetition filters, and the counter-based
Gumbel-max draw that makes row b of a batch sample exactly what `seed + b` gives alone (see
generate/engine.py's docstring). No model, no cache, no text: these take logits and return logits or ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..util.errors import UsageError


@dataclass
class SamplingConfig:
    max_new_tokens: int = 500
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off; else keep the k most likely tokens
    top_p: float = 1.0  # 1 = off; else keep the smallest set with cumulative probability >= p
    repetition_penalty: float = 1.0  # 1 = off; >1 makes tokens already in the sequence less likely
    seed: int | None = None  # None = a fresh random seed each call; row b uses seed + b

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


def check_request(beams: int = 1, num_samples: int = 1, stop=()) -> list[str]:
    """The checks of a generation request beyond its SamplingConfig, in the one place that makes
    them: the CLI calls this before loading a model, the library entry points again for Python
    callers. Returns the stop strings as a list."""
    if beams < 1:
        raise UsageError(f"--beams must be at least 1, got {beams}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be at least 1, got {num_samples}")
    if num_samples > 1 and beams > 1:
        raise UsageError("beam search gives one result: drop --beams to draw --num-samples samples, or drop --num-samples")
    stops = list(stop or ())
    if any(s == "" for s in stops):
        raise UsageError("--stop must not be empty; give the text at which a sample should end")
    return stops


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
    """CTRL's repetition penalty (Keskar et al. 2019): where seen (B, V) is True the logit is
    divided by `penalty` if positive, multiplied if negative. Example: [2, -1], seen both,
    penalty 2 -> [1, -2]."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


_U32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two xorshift-multiply rounds) of an int64 tensor of values in
    [0, 2^32). subtle: both multipliers are below 2^31, so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _U32
    x = x ^ (x >> 15)
    x = (x * 0x4CA68B35) & _U32
    return x ^ (x >> 16)


def row_keys(seed: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) int64 noise keys: row b is keyed by `seed + b` alone (any Python int)."""
    seeds = [(seed + b) & 0xFFFF_FFFF_FFFF_FFFF for b in range(batch)]
    lo = torch.tensor([s & _U32 for s in seeds], dtype=torch.long)
    hi = torch.tensor([s >> 32 for s in seeds], dtype=torch.long)
    return _mix32(lo ^ _mix32(hi)).to(device)


def uniform_noise(keys: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """(B, V) numbers in (0, 1), a pure function of (keys[b], step, token id): 24 random bits
    each, centred in their bucket so that 0 and 1 never occur."""
    row = _mix32(keys ^ _mix32(torch.as_tensor(step, device=keys.device) & _U32))  # (B,)
    ids = torch.arange(vocab, device=keys.device)  # (V,)
    x = _mix32((row[:, None] + ids * 0x9E3779B1) & _U32)  # (B, V); golden-ratio stride between ids
    return ((x >> 8).float() + 0.5) * 2.0 ** -24


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, keys: torch.Tensor | None = None,
                step: torch.Tensor | int = 0) -> torch.Tensor:
    """logits (B, V) -> next ids (B,): argmax when temperature is 0, else a sample from the
    filtered softmax via Gumbel-max with the noise of (keys, step); keys None = fresh randomness."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits.float() / cfg.temperature, cfg.top_k), cfg.top_p)
    if keys is None:
        keys = row_keys(int(torch.randint(0, 2**62, ())), logits.size(0), logits.device)
    gumbel = -torch.log(-torch.log(uniform_noise(keys, step, logits.size(-1))))  # (B, V)
    return (logits + gumbel).argmax(dim=-1)


# ---------------------------------------------------------------- the model at given positions
