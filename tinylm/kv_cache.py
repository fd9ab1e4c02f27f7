"""A preallocated key/value cache for incremental decoding, and the attention that reads it.

The model writes the keys and values of each new token here instead of recomputing the whole
prefix every step. This module stores tensors and attends over them; it knows nothing about
sampling, and the policy for running out of room (slide the window and re-prefill, or roll) lives
in generate.py.

Buffer shapes (L layers, B batch, nh heads, S slots, hs head size):
    k, v: (L, B, nh, S, hs)     S is the model's context size unless asked otherwise

Two ways to drive it:
- Prefix mode (`GPT.forward(idx, cache=cache)`): the T new tokens fill slots pos..pos+T-1, where
  `pos` is a Python int that `GPT.forward` advances; attention reads slots 0..pos+T-1.
- Static mode (`set_positions(pos)` with a device tensor, as generate.py does): the new tokens go
  to slots `pos % S` and attention always reads all S slots, masking those a query may not see.
  Every shape is fixed and the position lives on the device, so one decoding step can be
  recorded once as a CUDA graph and replayed for every token.
  With `rolling=True` a token at position p overwrites slot p % S, so the cache always holds the
  last S tokens (only sound with RoPE, whose scores depend on relative positions alone).
  On CUDA with triton, a step of one token per row instead runs decode_kernels.py's fused kernel
  (store + attend in one launch per layer, the slot and the mask derived from pos on the device)
  for caches of up to FUSED_MAX_LEN slots; set FUSED_DECODE = False to compare with the unfused path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Static-mode decoding of one token per row on CUDA uses the fused Triton kernel when triton is
# installed. Read when set_positions runs: a CUDA graph keeps the path it was recorded with.
FUSED_DECODE = True
# ...for caches of at most this many slots: the kernel walks the slots of a head on one SM, and
# past ~600 filled slots SDPA is faster (timings in decode_kernels.py). Read by the constructor.
FUSED_MAX_LEN = 512


def _fused_kernel(device: torch.device | str, max_len: int):
    """decode_kernels.decode_attention where it can run and pays (a CUDA cache of at most
    FUSED_MAX_LEN slots, triton installed), else None. Imported here, not at the top: CPU-only
    installs need not pay for importing triton."""
    if torch.device(device).type != "cuda" or max_len > FUSED_MAX_LEN:
        return None
    from . import decode_kernels

    return decode_kernels.decode_attention if decode_kernels.AVAILABLE else None


class KVCache:
    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, rolling: bool = False):
        shape = (n_layer, batch, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, S, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, S, hs)
        self.max_len = max_len
        self.rolling = rolling
        self.pos = 0  # prefix mode: positions filled so far; the next token goes to slot `pos`
        self.slot_ids = torch.arange(max_len, device=device)  # (S,)
        self.layer_ids = torch.arange(n_layer, device=device)  # (L,)
        self._open = torch.zeros((), device=device, dtype=dtype)  # the two values of an additive mask
        self._shut = torch.full((), float("-inf"), device=device, dtype=dtype)
        self.positions: torch.Tensor | None = None  # static mode: (T,) positions of the next forward's tokens
        self.slots: torch.Tensor | None = None  # static mode: (T,) their slots (None: the fused kernel finds them)
        self.mask: torch.Tensor | None = None  # static mode: (T, S) 0 where a query may attend, else -inf
        self._fused = _fused_kernel(device, max_len)  # decode_kernels.decode_attention, or None
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
        One token on CUDA with the fused kernel: neither is built (the kernel derives both from pos)."""
        self.positions = pos
        if FUSED_DECODE and self._fused is not None and pos.numel() == 1:
            self.slots = self.mask = None
            return
        self.slots = pos % self.max_len if self.rolling else pos  # (T,)
        self.mask = torch.where(self.slot_ids[None, :] <= pos[:, None], self._open, self._shut)  # (T, S)

    def _attend_static(self, layer: int, q, k, v) -> torch.Tensor:
        if self.slots is None:  # one token: store and attend in one kernel, over the filled slots only
            return self._fused(q, k, v, self.k, self.v, layer, self.positions, self.rolling)  # (B, nh, 1, hs)
        if torch.compiler.is_compiling():
            # Stored by indexing the whole buffer, (layer, slot) -> (B, nh, hs): an index_copy_ into the
            # view k[layer] made inductor copy the whole (L, B, nh, S, hs) buffer back after it, three
            # buffer copies per step (GPT-2 124M, batch 16: 3.8 ms a step instead of ~0.8). Eagerly the
            # index_copy_ below is the cheaper op (2.2 vs 4.7 us on the CPU). The layer goes in as a
            # 1-element index tensor: an int would make k[layer] a view again.
            at = self.layer_ids[layer:layer + 1]  # (1,)
            self.k[at, :, :, self.slots] = k.to(self.k.dtype).permute(2, 0, 1, 3)  # (T, B, nh, hs) into (L, B, nh, S, hs)
            self.v[at, :, :, self.slots] = v.to(self.v.dtype).permute(2, 0, 1, 3)
        else:
            self.k[layer].index_copy_(2, self.slots, k.to(self.k.dtype))
            self.v[layer].index_copy_(2, self.slots, v.to(self.v.dtype))
        kb, vb = self.k[layer], self.v[layer]  # (B, nh, S, hs) each, views into the buffers
        if torch.compiler.is_compiling() and q.device.type == "cpu":
            # Written out for inductor to fuse into its own C++ loops rather than calling SDPA: the
            # char model's int8 step went 0.59 -> 0.54 ms (bench/RESULTS.md, CPU --decode compile).
            att = (q @ kb.transpose(-1, -2)) * q.size(-1) ** -0.5 + self.mask  # (B, nh, T, S)
            return torch.softmax(att, dim=-1) @ vb  # (B, nh, T, hs)
        n = self.filled or self.max_len
        return F.scaled_dot_product_attention(q, kb[:, :, :n], vb[:, :, :n], attn_mask=self.mask[:, :n])  # (B, nh, T, hs)

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

    def reset(self) -> None:
        self.pos = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Row b takes the contents of row index[b] (beam search: each surviving beam takes its
        parent's cache). In place, so the buffers keep their addresses."""
        self.k.copy_(self.k.index_select(1, index))
        self.v.copy_(self.v.index_select(1, index))
