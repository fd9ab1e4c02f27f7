"""A fused Triton kernel for the linear layers of a decoding step, and the transformer block built
from it: LayerNorm as the prologue of the matrix product that follows it, bias, activation and
the residual add as its epilogue.

    fused_linear(x, W, b, ln=(w, b, eps), act="gelu", res=r) = act(LN(x) @ W.T + b) + r

Shapes (M rows: batch x one token, K in features, N out features):
    x:    (M, K)    row stride free, unit column stride
    W:    (N, K)    nn.Linear's weight, any strides
    b:    (N,)      optional
    ln:   LayerNorm weight and bias (K,) each (bias optional) and eps, optional
    res:  (M, N)    optional, added after the activation
    ->    (M, N)    contiguous, in x's dtype

Why: at batch 1 a decoding step is a chain of tiny kernels, each ~2.5 us on a GPU whatever it
does; the weights of the char model take ~5 us to read in all. The unfused block runs ~11
kernels per layer (LayerNorm, matrix-vector product with bias, GELU, residual add, twice, and
attention); with this kernel and kernels/decode_attention.py's attention it runs five: LN+qkv, attention,
proj+residual, LN+fc+GELU, proj+residual.

Numerics: statistics and accumulation in fp32; the normalised input is rounded to the weight's
dtype before the product (as nn.LayerNorm's output would be), the output once at the end (the
unfused path also rounds after the bias and after the activation, so bf16 results differ from it
by about one bf16 rounding, ~0.4%; fp32 results agree to ~1e-6).

Schedule: one program per (row, tile of BLOCK_N outputs) multiplies and sums in registers (a
matrix-vector product, no tensor cores): a step of few rows is waiting on memory, not on
arithmetic. Each row reads the weights again, so kernels/select.py picks the kernel for at most
MAX_ROWS rows.

Triton is optional: without it (CPU-only installs) this module imports and AVAILABLE is False.
The op is registered as torch.ops.tinylm.fused_linear (torch.library.triton_op), so
torch.compile sees the kernel rather than breaking its graph on it. `decode_block` runs one
pre-norm block of model/gpt.py on these kernels (its plain twin: Block.forward); kernels/select.py
decides when the decoding engine uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.positions import apply_rope

from .triton_guard import AVAILABLE, tl, triton, triton_op, wrap_triton

# activation name (model/gpt.py's MLP) -> the kernel's ACT code; swiglu needs two products (see decode_block)
ACTIVATIONS = {"none": 0, "gelu": 1, "relu": 2, "silu": 3, "relu2": 4}
# Rows up to which select.py picks the kernel: each row is its own program and reads W again
# (from L2). At batch 16 cuBLAS's unfused products were as fast or faster (bench/RESULTS.md).
# (char model: faster than unfused up to 8 rows; GPT-2 124M: faster at 2, even at 4.) And a head
# of at least WIDE_HEAD outputs runs unfused beyond one row: GPT-2's (77 MB of bf16, more than
# L2 holds) took 43 us at 2 rows and 81 at 4, cuBLAS 26.
MAX_ROWS = 4
WIDE_HEAD = 16384

if AVAILABLE:

    @triton.jit
    def _fused_linear_kernel(
            x_ptr, w_ptr, b_ptr, lnw_ptr, lnb_ptr, res_ptr, y_ptr, M, N, K, eps,
            x_sm, w_sn, w_sk, res_sm, y_sm,
            HAS_LN: tl.constexpr, LN_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
            HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_PAD: tl.constexpr):
        """Program (n, m): outputs rn = n * BLOCK_N + [0, BLOCK_N) of row m (kept as a (1, ...) row
        block so that the shapes read as those of a matrix product).
        K_PAD is K rounded up to a power of two; with BLOCK_K = K_PAD the product is one round of
        loads (x's row and the weight tile are fetched together), which is what batch 1 wants:
        each further round is another wait on memory."""
        rm = tl.program_id(1) + tl.arange(0, 1)  # (1,)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        m_ok, n_ok = rm < M, rn < N
        mean = tl.zeros([1], dtype=tl.float32)
        rstd = tl.full([1], 1.0, dtype=tl.float32)
        if HAS_LN:  # statistics of whole rows (K values each), in registers: mean, then the centred variance
            # (names of their own: triton wants a name the loop below reassigns to keep its shape)
            rk_row = tl.arange(0, K_PAD)
            row_ok = m_ok[:, None] & (rk_row < K)[None, :]
            xr = tl.load(x_ptr + rm[:, None] * x_sm + rk_row[None, :], mask=row_ok, other=0.0).to(tl.float32)  # (1, K_PAD)
            mean = tl.sum(xr, axis=1) / K
            xc = tl.where(row_ok, xr - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / K + eps)

        acc = tl.zeros([1, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)  # (BK,)
            k_ok = rk < K
            xv = tl.load(x_ptr + rm[:, None] * x_sm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # (1, BK)
            w = tl.load(w_ptr + rk[:, None] * w_sk + rn[None, :] * w_sn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # (BK, BN)
            if HAS_LN:
                xn = (xv.to(tl.float32) - mean[:, None]) * rstd[:, None]
                xn = xn * tl.load(lnw_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
                if LN_BIAS:
                    xn = xn + tl.load(lnb_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
                xv = xn.to(w_ptr.dtype.element_ty)  # rounded as nn.LayerNorm's output would be
            acc += tl.sum(xv.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)  # (1, BN)

        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if ACT == 1:  # GELU, tanh approximation: 0.5 a (1 + tanh(u)) = a * sigmoid(2u)
            u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = acc * tl.sigmoid(2.0 * u)
        elif ACT == 2:
            acc = tl.maximum(acc, 0.0)
        elif ACT == 3:
            acc = acc * tl.sigmoid(acc)
        elif ACT == 4:
            acc = tl.maximum(acc, 0.0)
            acc = acc * acc
        out_ok = m_ok[:, None] & n_ok[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + rm[:, None] * res_sm + rn[None, :], mask=out_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rm[:, None] * y_sm + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_ok)

    def tiles(N: int, K: int) -> tuple[int, int, int]:
        """(BLOCK_N, BLOCK_K, num_warps) for N outputs and K inputs; BLOCK_K 0 = all of K in one
        round. Whole rows of W in one round, in tiles of ~8k weights (BLOCK_N = 16 at K = 384, 8
        at 768, 2 at 3072), so that even the narrow layers spread over many programs (the char
        model's 384-wide ones over 24-96). A head of tens of thousands of outputs has programs
        enough, and there tiles of 32 x 256 in a loop read W faster (GPT-2's: 23 against 29 us).
        Timings: bench/tune_decode_linear.py, in bench/RESULTS.md."""
        if N >= 16384:
            return 32, 256, 4
        return max(2, min(64, 8192 // triton.next_power_of_2(K))), 0, 4

    def launch(x, weight, bias, ln_weight, ln_bias, eps: float, act: int, res, y, block_n: int, block_k: int, num_warps: int,
               wrap=lambda kernel: kernel) -> None:
        """Run the kernel into y (M, N) with the given tiles (the op picks them with `tiles`)."""
        M, K = x.shape
        N = weight.shape[0]
        k_pad = triton.next_power_of_2(K)
        dummy = x  # pointer arguments a constexpr switch leaves unread
        wrap(_fused_linear_kernel)[(triton.cdiv(N, block_n), M)](
            x, weight, bias if bias is not None else dummy, ln_weight if ln_weight is not None else dummy,
            ln_bias if ln_bias is not None else dummy, res if res is not None else dummy, y, M, N, K, eps,
            x.stride(0), weight.stride(0), weight.stride(1), res.stride(0) if res is not None else 0, y.stride(0),
            HAS_LN=ln_weight is not None, LN_BIAS=ln_bias is not None, HAS_BIAS=bias is not None, ACT=act,
            HAS_RES=res is not None, BLOCK_N=block_n, BLOCK_K=block_k or k_pad, K_PAD=k_pad, num_warps=num_warps)

    @triton_op("tinylm::fused_linear", mutates_args={})
    def _fused_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ln_weight: torch.Tensor | None,
                         ln_bias: torch.Tensor | None, eps: float, act: int, res: torch.Tensor | None) -> torch.Tensor:
        M, N = x.shape[0], weight.shape[0]
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)  # (M, N)
        launch(x, weight, bias, ln_weight, ln_bias, eps, act, res, y, *tiles(N, x.shape[1]), wrap=wrap_triton)
        return y


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, ln=None,
                 act: str = "none", res: torch.Tensor | None = None) -> torch.Tensor:
    """act(LN(x) @ weight.T + bias) + res in one kernel; x (M, K), weight (N, K) -> (M, N).
    ln: None or (weight (K,), bias (K,) or None, eps). Example: the MLP's first half of a
    pre-norm block is fused_linear(x, fc.weight, fc.bias, ln=(ln2.weight, ln2.bias, ln2.eps), act="gelu")."""
    if not AVAILABLE:
        raise RuntimeError("tinylm.kernels.decode_linear needs triton (and torch >= 2.6); use the unfused path")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (M, K) and weight (N, K) must agree on K, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    M, N = x.shape[0], weight.shape[0]
    if res is not None and (res.shape != (M, N) or res.stride(1) != 1):
        raise ValueError(f"res must be ({M}, {N}) with unit column stride, got {tuple(res.shape)} strides {res.stride()}")
    ln_w, ln_b, eps = ln if ln is not None else (None, None, 0.0)
    return torch.ops.tinylm.fused_linear(x, weight, bias, ln_w, ln_b, float(eps), ACTIVATIONS[act], res)


def _ln(norm) -> tuple:
    return norm.weight, norm.bias, norm.eps


def decode_head(ln_f, lm_head, x: torch.Tensor) -> torch.Tensor:
    """lm_head(ln_f(x)) for x (B, C) -> logits (B, V), fused unless the head is wide and B > 1."""
    if x.size(0) > 1 and lm_head.weight.size(0) >= WIDE_HEAD:
        return lm_head(ln_f(x))
    return fused_linear(x, lm_head.weight, lm_head.bias, ln=_ln(ln_f))


def block_kernel(block, x: torch.Tensor, rope, cache, layer: int) -> torch.Tensor:
    """model.gpt.BlockKernel form of decode_block: x (B, 1, C) -> (B, 1, C)."""
    return decode_block(block, x[:, 0], rope, cache, layer)[:, None]


def decode_block(block, x: torch.Tensor, rope, cache, layer: int) -> torch.Tensor:
    """One pre-norm block of model/gpt.py (x + attn(ln1(x)), then x + mlp(ln2(x))) for one token per
    row: x (B, C) -> (B, C), the keys and values through `cache` in static mode, as
    Block.forward(x[:, None], rope, cache, layer)[:, 0] computes it (to the numerics above)."""
    B, C = x.shape
    attn, mlp = block.attn, block.mlp
    nh, hs = attn.n_head, attn.head_size
    qkv = fused_linear(x, attn.qkv.weight, attn.qkv.bias, ln=_ln(block.ln1))  # (B, 3C)
    q, k, v = qkv.view(B, 1, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, 1, hs), views
    if attn.qk_norm:
        q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    y = cache.attend(layer, q, k, v)  # (B, nh, 1, hs)
    x = fused_linear(y.transpose(1, 2).reshape(B, C), attn.proj.weight, attn.proj.bias, res=x)  # (B, C)
    if mlp.activation == "swiglu":
        h = fused_linear(x, mlp.fc.weight, mlp.fc.bias, ln=_ln(block.ln2), act="silu")  # (B, F)
        h = h * fused_linear(x, mlp.gate.weight, mlp.gate.bias, ln=_ln(block.ln2))  # (B, F)
    else:
        h = fused_linear(x, mlp.fc.weight, mlp.fc.bias, ln=_ln(block.ln2), act=mlp.activation)  # (B, F)
    return fused_linear(h, mlp.proj.weight, mlp.proj.bias, res=x)  # (B, C)
