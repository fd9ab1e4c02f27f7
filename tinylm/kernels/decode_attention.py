"""A fused Triton kernel for one decoding step of attention: store the new token's key and value
in the KV cache and attend over the cache, in one launch per layer.

Shapes (L layers, B batch, nh heads, S cache slots, hs head size):
    q, k_new, v_new:   (B, nh, 1, hs)      any strides (views of the qkv projection are fine)
    k_cache, v_cache:  (L, B, nh, S, hs)   kv_cache.KVCache's whole buffers; `layer` picks one
    pos:               (1,) int64          on the device: the new token's position
    returns y:         (B, nh, 1, hs)      contiguous, in q's dtype, so y.transpose(1, 2) is already
                                           the (B, 1, nh * hs) layout the output projection reads

The slot and the mask are those of model/kv_cache.py's static mode: the new key goes to slot pos % S
(rolling) or pos, and the query sees slots 0..min(pos, S - 1), i.e. positions <= pos. The position
is read on the device, so a CUDA graph records the step once and replays it at every position.

Why: at batch 1 a decoding step is a few dozen tiny kernels, each ~2.5 us on a GPU, and attention
was three of them per layer (two index_copy_ writes and SDPA over all S slots with an additive
mask). One program per (row, head) does all three, and reads only the slots that are filled.
Per layer in a replayed CUDA graph on an H200, bf16, batch 1, hs 64 (index_copy_ x2 + SDPA: ~10.9 us):
    6 heads, S=256:   3.9 us at any position (one block of 256 slots)
    12 heads, S=1024: 3.9 us at pos 100, 9.5 at pos 600, 13.5 at pos 1023
Each further block of slots is a dependent round of loads on one SM, so long caches lose to
SDPA, which spreads them over many; splitting the slots over programs (flash-decoding) would fix
that. kernels/select.py picks the kernel only for caches of up to FUSED_MAX_LEN slots.

Triton is optional: without it (CPU-only installs) this module imports and AVAILABLE is False.
The op is registered as torch.ops.tinylm.decode_attention through torch.library.triton_op, so
torch.compile sees the kernel (and that it writes the caches) instead of breaking its graph.
subtle: the op takes the whole buffers and a layer index, not the views k[layer]. Given views,
inductor (torch 2.11) ran the kernel on copies of the buffer, one per layer, and the compiled
step lost cache writes (wrong tokens) and spent 24 more kernels per step on the copies.
This module knows nothing of windows or sampling; it plugs into model/kv_cache.py's `one_token`.
Its plain twin: KVCache's store_by_slot + attend_filled (tests/test_decode_kernel.py holds them equal).
"""

import math

import torch

from .triton_guard import AVAILABLE, tl, triton, triton_op, wrap_triton

if AVAILABLE:

    @triton.jit
    def _fold_block(q, kc, vc, kc_ss, kc_sd, vc_ss, vc_sd, s, d, load_ok, seen, m, l, acc, QK_SCALE: tl.constexpr):
        """Fold the slots s (BS,) into the online-softmax state: m the running max of the scores,
        l the running sum of exp2(score - m), acc (D,) the running sum of exp2(score - m) * value.
        load_ok (BS, D) masks the loads, seen (BS,) the slots the query may see."""
        k = tl.load(kc + s[:, None] * kc_ss + d[None, :] * kc_sd, mask=load_ok, other=0.0).to(tl.float32)  # (BS, D)
        v = tl.load(vc + s[:, None] * vc_ss + d[None, :] * vc_sd, mask=load_ok, other=0.0).to(tl.float32)  # (BS, D)
        scores = tl.where(seen, tl.sum(k * q[None, :], axis=1) * QK_SCALE, float("-inf"))  # (BS,)
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new)  # (BS,), 0 where not seen
        acc = acc * alpha + tl.sum(tl.where(seen[:, None], p[:, None] * v, 0.0), axis=0)  # where: 0 * a stale inf
        l = l * alpha + tl.sum(p, axis=0)
        return m_new, l, acc

    @triton.jit
    def _decode_attention_kernel(
            q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, pos_ptr, y_ptr,
            q_sb, q_sh, q_sd, kn_sb, kn_sh, kn_sd, vn_sb, vn_sh, vn_sd,
            kc_sl, kc_sb, kc_sh, kc_ss, kc_sd, vc_sl, vc_sb, vc_sh, vc_ss, vc_sd, y_sb, y_sh, y_sd, layer, n_head, S,
            HS: tl.constexpr, QK_SCALE: tl.constexpr, ROLLING: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        """One program per (row b, head h); QK_SCALE = log2(e) / sqrt(hs): the softmax runs in
        base 2. Online softmax over blocks of BLOCK_S slots (Milakov & Gimelshein 2018), as in
        FlashAttention, with one query row."""
        b = tl.program_id(0) // n_head
        h = tl.program_id(0) % n_head
        d = tl.arange(0, BLOCK_D)
        dm = d < HS  # BLOCK_D is hs rounded up to a power of two
        q = tl.load(q_ptr + b * q_sb + h * q_sh + d * q_sd, mask=dm, other=0.0).to(tl.float32)  # (D,)
        kn = tl.load(kn_ptr + b * kn_sb + h * kn_sh + d * kn_sd, mask=dm, other=0.0).to(kc_ptr.dtype.element_ty)
        vn = tl.load(vn_ptr + b * vn_sb + h * vn_sh + d * vn_sd, mask=dm, other=0.0).to(vc_ptr.dtype.element_ty)
        kc = kc_ptr + layer * kc_sl + b * kc_sb + h * kc_sh  # this (layer, b, h)'s (S, hs) keys
        vc = vc_ptr + layer * vc_sl + b * vc_sb + h * vc_sh
        pos = tl.load(pos_ptr)
        if ROLLING:
            slot = (pos % S).to(tl.int32)
        else:
            slot = pos.to(tl.int32)
        n = tl.minimum(pos + 1, S).to(tl.int32)  # slots 0..n-1 hold positions <= pos
        # Without rolling a position past the cache has no slot: store nothing rather than write out
        # of bounds (the caller slides its window before that; the reference would fault instead).
        # (As `d < hs or 0`, not `dm & (slot < S)`: the interpreter mistypes a vector & scalar mask.)
        store_dm = d < tl.where(slot < S, HS, 0)
        tl.store(kc + slot * kc_ss + d * kc_sd, kn, mask=store_dm)
        tl.store(vc + slot * vc_ss + d * vc_sd, vn, mask=store_dm)

        # subtle: the new token's score comes from registers, never from the slot just stored: other
        # threads of this program need not see that store yet. It also seeds the running max m with
        # a finite value, so no block can compute exp2(-inf - -inf).
        m = tl.sum(q * kn.to(tl.float32), axis=0) * QK_SCALE
        l = tl.full([], 1.0, tl.float32)
        acc = vn.to(tl.float32)  # (D,)
        # The first block is peeled off the loop and its loads are masked by S alone, not by n: they
        # need not wait for pos to arrive (~1 us sooner on an H200). The loop's trip count needs n.
        s = tl.arange(0, BLOCK_S)  # (BS,) slots
        m, l, acc = _fold_block(q, kc, vc, kc_ss, kc_sd, vc_ss, vc_sd, s, d, (s < S)[:, None] & dm[None, :],
                                (s < n) & (s != slot), m, l, acc, QK_SCALE)
        for start in range(BLOCK_S, n, BLOCK_S):
            s = start + tl.arange(0, BLOCK_S)
            seen = (s < n) & (s != slot)
            m, l, acc = _fold_block(q, kc, vc, kc_ss, kc_sd, vc_ss, vc_sd, s, d, seen[:, None] & dm[None, :],
                                    seen, m, l, acc, QK_SCALE)
        tl.store(y_ptr + b * y_sb + h * y_sh + d * y_sd, (acc / l).to(y_ptr.dtype.element_ty), mask=dm)

    @triton_op("tinylm::decode_attention", mutates_args={"k_cache", "v_cache"})
    def _decode_attention_op(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                             v_cache: torch.Tensor, layer: int, pos: torch.Tensor, rolling: bool) -> torch.Tensor:
        B, nh, _, hs = q.shape
        S = k_cache.shape[3]
        y = torch.empty((B, nh, 1, hs), dtype=q.dtype, device=q.device)  # (B, nh, 1, hs)
        # Each loop trip waits for its loads (~3 us a 256-slot block on an H200, bench in the
        # docstring), so blocks are large: the char model's 256 slots are one block, 8 warps.
        block_s = min(256, triton.next_power_of_2(S))
        wrap_triton(_decode_attention_kernel)[(B * nh,)](
            q, k_new, v_new, k_cache, v_cache, pos, y,
            q.stride(0), q.stride(1), q.stride(3), k_new.stride(0), k_new.stride(1), k_new.stride(3),
            v_new.stride(0), v_new.stride(1), v_new.stride(3),
            *k_cache.stride(), *v_cache.stride(), y.stride(0), y.stride(1), y.stride(3), layer, nh, S,
            HS=hs, QK_SCALE=math.log2(math.e) / math.sqrt(hs), ROLLING=rolling, BLOCK_S=block_s,
            BLOCK_D=triton.next_power_of_2(hs), num_warps=8 if block_s >= 256 else 4)
        return y


def decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, layer: int, pos: torch.Tensor, rolling: bool) -> torch.Tensor:
    """Store k_new, v_new (B, nh, 1, hs) at slot pos % S (rolling) or pos of k_cache[layer],
    v_cache[layer] ((L, B, nh, S, hs) buffers), in place, then attend with q (B, nh, 1, hs) over
    the slots holding positions <= pos, softmax scale 1/sqrt(hs), fp32 accumulation
    -> y (B, nh, 1, hs) in q's dtype.
    Example: S=4, pos=[5], rolling -> the new key goes to slot 1 and q sees all 4 slots.
    No host sync and one allocation (y), so it can be recorded in a CUDA graph."""
    if not AVAILABLE:
        raise RuntimeError("tinylm.decode_kernels needs triton (and torch >= 2.6); use the unfused path")
    B, nh, T, hs = q.shape
    if T != 1 or k_new.shape != q.shape or v_new.shape != q.shape:
        raise ValueError(f"decode_attention takes one token per row: q, k_new, v_new (B, nh, 1, hs), got "
                         f"{tuple(q.shape)}, {tuple(k_new.shape)}, {tuple(v_new.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.dim() != 5 or k_cache.shape[1:3] != (B, nh) or k_cache.shape[4] != hs:
        raise ValueError(f"caches must be (L, B, nh, S, hs) = (L, {B}, {nh}, S, {hs}), got "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if not 0 <= layer < k_cache.shape[0]:
        raise ValueError(f"layer {layer} is not in the cache's {k_cache.shape[0]} layers")
    if pos.numel() != 1:
        raise ValueError(f"pos must hold one position, got shape {tuple(pos.shape)}")
    return torch.ops.tinylm.decode_attention(q, k_new, v_new, k_cache, v_cache, layer, pos, rolling)
