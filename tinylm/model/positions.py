"""Positional information: sinusoidal tables and rotary embeddings (RoPE).

Learned position embeddings are a plain `nn.Embedding` in model/gpt.py; this module holds the two
fixed schemes, as pure functions that build tables and apply them. It knows nothing about the
rest of the model.

Notation: T sequence length, C embedding width, hs head size.
"""

from __future__ import annotations

import torch


def sinusoidal_table(n_pos: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(n_pos, dim) table of Vaswani et al. 2017, sec. 3.5: even columns sin, odd columns cos,
    wavelengths a geometric progression from 2*pi to base*2*pi."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (n_pos, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (ceil(dim/2),)
    angles = pos * inv_freq  # (n_pos, ceil(dim/2))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def rope_inv_freq(head_size: int, base: float = 10000.0) -> torch.Tensor:
    """(hs/2,) rotation speeds of rotary embeddings (Su et al. 2021): pair i of a head turns by
    pos * base^(-2i/hs), fast for the first pairs, slow for the last."""
    return base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)


def rope_angles(pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles at positions pos (T,): each (T, hs/2)."""
    angles = pos.to(inv_freq.device, torch.float32)[:, None] * inv_freq  # (T, hs/2)
    return angles.cos(), angles.sin()


def rope_tables(n_pos: int, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for positions 0..n_pos-1, each (n_pos, hs/2)."""
    return rope_angles(torch.arange(n_pos), rope_inv_freq(head_size, base))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + hs/2]) of x (B, nh, T, hs) by the angles of each
    position; cos and sin are (T, hs/2), already sliced to the positions of x."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()  # (B, nh, T, hs/2) each
    # subtle: rotate in fp32 and cast back, so bf16 training does not lose the small angles.
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, nh, T, hs)
    return out.type_as(x)
