"""What the GPU's kernels reach at GPT-2 124M training shapes: the ceilings a training step is
measured against.

    PYTHONPATH=. python bench/microbench_kernels.py

1. Attention: F.scaled_dot_product_attention forward + backward, causal, bf16, (12, 12, 1024, 64),
   for each SDPA backend PyTorch offers (flash, cuDNN, memory-efficient); TFLOP/s counts the causal
   half only (4*B*H*T*T*hs/2 forward, 2.5x that forward + backward).
2. The step's matmuls (bf16, M = 12*1024 tokens): each Linear's forward (x W^T), its input
   gradient and its weight gradient, TFLOP/s each, and their sum per training step.
3. Cross-entropy over (12288, 50304) logits: bf16 logits upcast to fp32 (the unfused loss) against
   the loss taken on bf16 logits directly, forward + backward, and fused_ce.py's kernel (loss and
   gradient in one pass) with the GB/s it reaches (one read of the logits, one write of the gradient).
4. The head and its loss together, forward + backward: nn.Linear + compiled F.cross_entropy against
   fused_ce.linear_cross_entropy.
Pick parts by name: `microbench_kernels.py ce head` (default: all).
Timing: CUDA events, median of 20 after 5 warm-up calls.
"""

from __future__ import annotations

import statistics

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
from bench_train import time_steps  # noqa: E402


def timed(fn, iters: int = 20, warmup: int = 5) -> float:
    """Median milliseconds of fn() on the GPU (bench_train.time_steps: CUDA events per call)."""
    return statistics.median(time_steps(fn, warmup, iters)) * 1e3


def attention(B=12, H=12, T=1024, hs=64) -> None:
    q, k, v = (torch.randn(B, H, T, hs, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, T, hs, device="cuda", dtype=torch.bfloat16)
    fwd_flops = 4 * B * H * T * T * hs / 2
    print(f"attention (B={B}, H={H}, T={T}, hs={hs}), causal, bf16")
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel([backend]):
                f = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                fb = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g))
        except RuntimeError as e:
            print(f"  {name:10} unavailable: {str(e).splitlines()[0][:100]}")
            continue
        print(f"  {name:10} fwd {f:6.3f} ms ({fwd_flops / f / 1e9:5.0f} TFLOP/s)   fwd+bwd {fb:6.3f} ms "
              f"({3.5 * fwd_flops / fb / 1e9:5.0f} TFLOP/s)   x12 layers fwd+bwd {12 * fb:6.2f} ms")


def matmuls(M=12 * 1024) -> None:
    shapes = {"qkv": (768, 2304), "attn proj": (768, 768), "fc": (768, 3072), "mlp proj": (3072, 768), "lm_head": (768, 50304)}
    total = 0.0
    print(f"matmuls, M={M} tokens, bf16: forward / input grad / weight grad (ms, TFLOP/s)")
    for name, (k, n) in shapes.items():
        x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        gy = torch.randn(M, n, device="cuda", dtype=torch.bfloat16)
        flops = 2 * M * k * n
        f = timed(lambda: x @ w.t())
        di = timed(lambda: gy @ w)
        dw = timed(lambda: gy.t() @ x)
        per_layer = f + di + dw
        count = 1 if name == "lm_head" else 12
        total += count * per_layer
        print(f"  {name:10} ({k:5}->{n:5}) {f:6.3f} ({flops / f / 1e9:4.0f})  {di:6.3f} ({flops / di / 1e9:4.0f})  "
              f"{dw:6.3f} ({flops / dw / 1e9:4.0f})   x{count}: {count * per_layer:6.2f} ms")
    print(f"  all matmuls of one training step: {total:.2f} ms")


def cross_entropy(M=12 * 1024, V=50304) -> None:
    logits = (torch.randn(M, V, device="cuda", dtype=torch.bfloat16)).requires_grad_()
    y = torch.randint(0, V, (M,), device="cuda")
    print(f"cross-entropy over ({M}, {V}) bf16 logits, forward + backward")
    for name, fn in [("fp32 upcast", lambda: F.cross_entropy(logits.float(), y)),
                     ("bf16", lambda: F.cross_entropy(logits, y))]:
        ms = timed(lambda: fn().backward())
        print(f"  eager {name:12} {ms:6.3f} ms")
        cfn = torch.compile(fn)
        ms = timed(lambda: cfn().backward())
        print(f"  compiled {name:9} {ms:6.3f} ms")


def fused_cross_entropy(M=12 * 1024, V=50304) -> None:
    from tinylm.kernels import head_loss as fused_ce

    logits = torch.randn(M, V, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, V, (M,), device="cuda")
    gb = 2 * logits.numel() * logits.element_size() / 1e9  # read the logits once, write the gradient once
    default = fused_ce.BLOCK, fused_ce.NUM_WARPS
    for block, warps in [default, (2048, 4), (4096, 4), (8192, 8), (8192, 16), (16384, 16)]:
        fused_ce.BLOCK, fused_ce.NUM_WARPS = block, warps
        ms = timed(lambda: fused_ce.ce_loss_grad(logits, y))
        print(f"  fused_ce kernel (loss + gradient), BLOCK {block:5} warps {warps:2}: {ms:6.3f} ms = "
              f"{gb / ms * 1e3:.0f} GB/s over {gb:.2f} GB{'  (default)' if (block, warps) == default else ''}")
    fused_ce.BLOCK, fused_ce.NUM_WARPS = default


def head(M=12 * 1024, C=768, V=50304) -> None:
    from tinylm.kernels import head_loss as fused_ce

    x = torch.randn(M, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(V, C, device="cuda") * 0.02).requires_grad_()
    y = torch.randint(0, V, (M,), device="cuda")
    print(f"head + loss, ({M}, {C}) x ({V}, {C}) under bf16 autocast, forward + backward")

    def unfused():
        return F.cross_entropy(F.linear(x, w).float(), y)

    for name, fn in [("linear + compiled CE", torch.compile(unfused)),
                     ("fused_ce", lambda: fused_ce.linear_cross_entropy(x, w, y))]:
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn()
            loss.backward()
        torch.cuda.reset_peak_memory_stats()
        ms = timed(run)
        print(f"  {name:22} {ms:6.3f} ms  peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


PARTS = {"attention": attention, "matmuls": matmuls, "ce": lambda: (cross_entropy(), fused_cross_entropy()), "head": head}

if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for part in sys.argv[1:] or list(PARTS):
        PARTS[part]()
