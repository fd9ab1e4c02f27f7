"""A preallocated key/value cache for incremental decoding.

The model writes the keys and values of each new token here instead of recomputing the whole
prefix every step. This module only stores tensors and tracks how many positions are filled; the
attention that reads it lives in model.py, and the policy for running out of room (slide the
window and re-prefill) lives in generate.py.

Buffer shapes (L layers, B batch, nh heads, T_max positions, hs head size):
    k, v: (L, B, nh, T_max, hs)
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, T_max, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, T_max, hs)
        self.max_len = max_len
        self.pos = 0  # positions filled so far; the next token goes to index `pos`

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, Tn, hs) at positions pos..pos+Tn-1 of `layer` and return all keys and
        values so far, each (B, nh, pos+Tn, hs). `pos` itself advances in `advance`, once all
        layers have written."""
        t_new = k.shape[2]
        end = self.pos + t_new
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search: each surviving beam takes its parent's cache)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
