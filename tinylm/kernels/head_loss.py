"""The training loss of the output head, fused: logits -> (loss, gradient of the logits) in one
Triton kernel, for training on CUDA.

    loss = linear_cross_entropy(x, W, targets)   # = F.cross_entropy(x @ W.T, targets, ignore_index=-1)

Shapes (N rows = batch x time, C model width, V padded vocabulary):
    x:       (N, C)   the final LayerNorm's output
    W:       (V, C)   the head's weight (tied to the token embedding, or not)
    targets: (N,)     next-token ids, -1 = ignored
    ->       ()       fp32 mean over the rows that are not ignored

Why: at GPT-2 shape the logits are the largest tensor of a step (12 x 1024 x 50304 bf16 = 1.24 GB).
The unfused loss reads them in the forward (log-sum-exp), then in the backward reads them again and
writes their gradient, plus a fill and a scatter for the one-hot term: ~1.9 ms a step on an H200 of
pure memory traffic (bench/RESULTS.md, "Throughput at GPT-2 124M shape"). Here the forward computes
the gradient too, while the row is at hand: each program takes one row, finds its log-sum-exp in a
first sweep and writes softmax - onehot in a second; nothing is filled or scattered, and the
backward is just the two matrix products of the head. On an H200 the kernel takes 0.94 ms for what
the unfused loss did in 1.85 (2.6 TB/s counting one read of the logits and one write). The price: the gradient is computed even if backward never runs, so this path
is for training steps only (kernels/select.py picks it for training on CUDA when the head has no
soft-cap or bias and the vocabulary is at least select.FUSED_CE_MIN_VOCAB); evaluation keeps the
plain head and F.cross_entropy.

Scaling: the kernel writes softmax - onehot unscaled (exactly what bf16 holds best); the mean's
1/n and the upstream gradient (1/accumulation steps) are applied in fp32 to the two products'
outputs, (N, C) and (V, C), which are ~65x smaller than the logits.

Numerics: the log-sum-exp and the probabilities are computed in fp32 from the stored (bf16 under
autocast) logits, as F.cross_entropy(logits.float()) does; the gradient is rounded to the logits'
dtype once.

Triton is optional: without it AVAILABLE is False and select.py never picks this module. The kernel
is registered as torch.ops.tinylm.ce_loss_grad (torch.library.triton_op), so torch.compile and the
CUDA graph of the training step see it as one op. `tinylm train` has no flag for it; bench code
passes fused_loss=False to select.training_kernels to measure the unfused loss.
"""

from __future__ import annotations

import torch

from .triton_guard import AVAILABLE, tl, triton, triton_op, wrap_triton
IGNORE_INDEX = -1
BLOCK = 4096  # logits per load of a row sweep (8 KB of bf16), fewer for a narrow vocabulary
NUM_WARPS = 8

if AVAILABLE:

    @triton.jit
    def _ce_loss_grad_kernel(logits_ptr, targets_ptr, loss_ptr, grad_ptr, V, l_sm, g_sm,
                             IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        """Program r: row r of the logits (V values). Sweep 1 keeps the running max m of the row and
        the running sum s of exp(logit - m), rescaled when a block raises m: one exp per logit (a
        max per lane would need two). Sweep 2 writes exp(logit - lse) - [column == target]."""
        row = tl.program_id(0).to(tl.int64)
        src = logits_ptr + row * l_sm
        dst = grad_ptr + row * g_sm
        target = tl.load(targets_ptr + row).to(tl.int64)
        valid = target != IGNORE
        # subtle: m starts at a finite floor, not -inf: exp(-inf - -inf) would be nan
        m = tl.full([1], -1.0e30, dtype=tl.float32)  # (1,) running max
        s = tl.zeros([1], dtype=tl.float32)  # (1,) running sum of exp(x - m)
        for v0 in range(0, V, BLOCK):
            cols = v0 + tl.arange(0, BLOCK)
            x = tl.load(src + cols, mask=cols < V, other=float("-inf")).to(tl.float32)  # (BLOCK,)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)  # (1,)
        x_t = tl.load(src + target, mask=valid, other=0.0).to(tl.float32)
        one = tl.arange(0, 1)
        tl.store(loss_ptr + row + one, tl.where(valid, lse - x_t, 0.0))
        keep = tl.where(valid, 1.0, 0.0)  # an ignored row has no gradient
        for v0 in range(0, V, BLOCK):  # (walking it backwards, from what L2 holds last, measured no faster)
            cols = v0 + tl.arange(0, BLOCK)
            ok = cols < V
            x = tl.load(src + cols, mask=ok, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            g = tl.where(cols == target, p - 1.0, p) * keep
            tl.store(dst + cols, g.to(grad_ptr.dtype.element_ty), mask=ok)

    @triton_op("tinylm::ce_loss_grad", mutates_args={})
    def _ce_loss_grad_op(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N, V = logits.shape
        loss = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,) per-row loss, 0 where ignored
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)  # (N, V)
        block = min(BLOCK, triton.next_power_of_2(V))  # a char model's ~100 logits a row: one small block
        warps = max(1, min(NUM_WARPS, block // 512))
        wrap_triton(_ce_loss_grad_kernel)[(N,)](logits, targets, loss, grad, V, logits.stride(0), grad.stride(0),
                                                IGNORE=IGNORE_INDEX, BLOCK=block, num_warps=warps)
        return loss, grad


def ce_loss_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), targets (N,) -> (per-row loss (N,) fp32, d(sum of losses)/d logits (N, V)):
    row r's loss is logsumexp(logits[r]) - logits[r, targets[r]] and its gradient softmax(logits[r])
    - onehot(targets[r]); both are 0 where targets[r] == -1."""
    if not AVAILABLE:
        raise RuntimeError("tinylm.kernels.head_loss needs triton (and torch >= 2.6); use F.cross_entropy")
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits (N, V) and targets (N,) must agree on N, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    return torch.ops.tinylm.ce_loss_grad(logits, targets)


class _LinearCrossEntropy(torch.autograd.Function):
    """loss = mean over valid rows of CE(x @ W.T); the forward keeps the logits' gradient instead
    of the logits."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = x @ weight.T  # (N, V)
        loss_rows, grad_logits = ce_loss_grad(logits, targets)  # (N,), (N, V)
        del logits  # subtle: freed here, so a step holds one (N, V) tensor at a time, not two
        n_valid = (targets != IGNORE_INDEX).sum()  # 0 -> nan loss, as F.cross_entropy gives
        ctx.save_for_backward(x, weight, grad_logits, n_valid)
        return loss_rows.sum() / n_valid

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        x, weight, grad_logits, n_valid = ctx.saved_tensors
        scale = grad_loss.float() / n_valid  # () fp32: d loss / d (sum of row losses) x upstream
        grad_x = (grad_logits @ weight).float() * scale  # (N, C)
        grad_w = (grad_logits.T @ x).float() * scale  # (V, C)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets, ignore_index=-1) for x (N, C), weight (V, C), targets
    (N,), with the logits' gradient computed in the forward (see the module docstring). Under CUDA
    autocast the product runs in the autocast dtype, as nn.Linear's would."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)  # recorded casts: the fp32 parameter gets its gradient
    return _LinearCrossEntropy.apply(x, weight, targets)


def fused_head_loss(model, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The model's head and loss in one op: equals train/step.py's plain_head_loss, the mean
    cross-entropy of model.head(h) (no soft-cap, no head bias: kernels/select.py checks), for h
    (B, T, C) the residual stream after the last block, targets (B, T)."""
    B, T, C = h.shape
    x = model.ln_f(h)  # (B, T, C)
    return linear_cross_entropy(x.reshape(B * T, C), model.lm_head.weight, targets.reshape(-1))
