"""A preallocated key/value cache for incremental decoding, and the attention that reads it.

The model writes the keys and values of each new token here instead of recomputing the whole
prefix every step. This module stores tensors and attends over them; it knows nothing about
sampling, and the policy for running out of room (slide the window and re-prefill, or roll) lives
in generate/engine.py.

Buffer shapes (L layers, B batch, nh heads, S slots, hs head size):
    k, v: (L, B, nh, S, hs)     S is the model's context size unless asked otherwise

Two ways to drive it:
- Prefix mode (`GPT.forward(idx, cache=cache)`): the T new tokens fill slots pos..pos+T-1, where
  `pos` is a Python int that `GPT.forward` advances; attention reads slots 0..pos+T-1.
- Static mode (`set_positions(pos)` with a device tensor, as generate/engine.py does): the new tokens go
  to slots `pos % S` and attention always reads all S slots, masking those a query may not see.
  Every shape is fixed and the position lives on the device, so one decoding step can be
  recorded once as a CUDA graph and replayed for every token.
  With `rolling=True` a token at position p overwrites slot p % S, so the cache always holds the
  last S tokens (only sound with RoPE, whose scores depend on relative positions alone).
  The store and the attention of static mode are replaceable functions (see KVCache): the
  decoding engine may plug in fast paths from kernels/, chosen in kernels/select.py.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def store_by_slot(cache: "KVCache", layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
    """Static mode's plain store: k, v (B, nh, T, hs) into slots `cache.slots` of `layer`."""
    cache.k[layer].index_copy_(2, cache.slots, k.to(cache.k.dtype))
    cache.v[layer].index_copy_(2, cache.slots, v.to(cache.v.dtype))


def attend_filled(cache: "KVCache", layer: int, q: torch.Tensor) -> torch.Tensor:
    """Static mode's plain attention: queries q (B, nh, T, hs) over the filled slots of `layer`
    (all S when `filled` is None), masked by `cache.mask` -> (B, nh, T, hs)."""
    n = cache.filled or cache.max_len
    kb, vb = cache.k[layer, :, :, :n], cache.v[layer, :, :, :n]  # (B, nh, n, hs) each, views
    return F.scaled_dot_product_attention(q, kb, vb, attn_mask=cache.mask[:, :n])  # (B, nh, T, hs)


class KVCache:
    """Keys and values of every layer for B rows of up to S positions, and attention over them.

    Static mode has three replaceable steps, each a plain function by default; kernels/select.py
    may swap in a fast path that equals it (tests/test_decode_kernel.py, test_generate_cache.py):
    `store` and `attend` (above), and `one_token`, an optional kernel that stores and attends in
    one launch when a step feeds one token per row (kernels/decode_attention.py)."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, rolling: bool = False):
        shape = (n_layer, batch, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, S, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, S, hs)
        self.max_len = max_len
        self.rolling = rolling
        self.pos = 0  # prefix mode: positions filled so far; the next token goes to slot `pos`
        self.slot_ids = torch.arange(max_len, device=device)  # (S,)
        self._open = torch.zeros((), device=device, dtype=dtype)  # the two values of an additive mask
        self._shut = torch.full((), float("-inf"), device=device, dtype=dtype)
        self.positions: torch.Tensor | None = None  # static mode: (T,) positions of the next forward's tokens
        self.slots: torch.Tensor | None = None  # static mode: (T,) their slots (None: `one_token` finds them)
        self.mask: torch.Tensor | None = None  # static mode: (T, S) 0 where a query may attend, else -inf
        self.store: Callable = store_by_slot
        self.attend_slots: Callable = attend_filled
        # (q, k, v, k_cache, v_cache, layer, positions, rolling) -> (B, nh, 1, hs), or None
        self.one_token: Callable | None = None
        # static mode, eager only: attend over slots 0..filled-1 alone (a host int; the rest are masked
        # anyway). None = all S slots, as a recorded CUDA graph must (its shapes are fixed).
        self.filled: int | None = None

    # ---- static mode ---------------------------------------------------------------------------

    def set_positions(self, pos: torch.Tensor) -> None:
        """Static mode: the next forward's T tokens sit at positions pos (T,), a device tensor.

        Query at position p sees the slots holding positions <= p. Without rolling that is slots
        0..p; with rolling, once p >= S every slot holds one of the last S positions, so all of
        them (the comparison below gives both). Prefilling several tokens at once must not wrap.
        The mask is additive (0 or -inf), built once here rather than converted in every layer.
        Example: S=4, pos=[1, 2] -> slots [1, 2], mask [[0, 0, -inf, -inf], [0, 0, 0, -inf]].
        One token with a `one_token` kernel: neither is built (the kernel derives both from pos)."""
        self.positions = pos
        if self.one_token is not None and pos.numel() == 1:
            self.slots = self.mask = None
            return
        self.slots = pos % self.max_len if self.rolling else pos  # (T,)
        self.mask = torch.where(self.slot_ids[None, :] <= pos[:, None], self._open, self._shut)  # (T, S)

    def _attend_static(self, layer: int, q, k, v) -> torch.Tensor:
        if self.slots is None:  # one token: store and attend in one kernel, over the filled slots only
            return self.one_token(q, k, v, self.k, self.v, layer, self.positions, self.rolling)  # (B, nh, 1, hs)
        self.store(self, layer, k, v)
        return self.attend_slots(self, layer, q)  # (B, nh, T, hs)

    # ---- prefix mode (GPT.forward) -------------------------------------------------------------

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

    def _attend_prefix(self, layer: int, q, k, v) -> torch.Tensor:
        T, past = q.shape[2], self.pos
        k, v = self.update(layer, k, v)  # (B, nh, past+T, hs) each
        mask = None
        if past > 0 and T > 1:  # query i (absolute past+i) may see keys 0..past+i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)  # (T, past+T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0 and T > 1)  # (B, nh, T, hs)

    # ---- both ----------------------------------------------------------------------------------

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this step's keys and values k, v (B, nh, T, hs) of `layer`, then attend with the
        queries q (B, nh, T, hs) over everything the cache holds -> (B, nh, T, hs)."""
        if self.positions is not None:
            return self._attend_static(layer, q, k, v)
        return self._attend_prefix(layer, q, k, v)

    def advance(self, n: int) -> None:
        self.pos += n

    def reorder(self, index: torch.Tensor) -> None:
        """Row b takes the contents of row index[b] (beam search: each surviving beam takes its
        parent's cache). In place, so the buffers keep their addresses."""
        self.k.copy_(self.k.index_select(1, index))
        self.v.copy_(self.v.index_select(1, index))
