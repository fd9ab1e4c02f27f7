#!/usr/bin/env python3
"""Tiles for decode_linear.py's fused kernel, and the kernel against the unfused modules, at the
shapes of a decoding step (GPU, bf16).

    PYTHONPATH=. python bench/tune_decode_linear.py [--shapes char,gpt2] [--rows 1,2,4,8,16]

For each layer of a block (qkv with LayerNorm, attention's proj with the residual, fc with
LayerNorm and GELU, the MLP's proj with the residual, and the head with the final LayerNorm) it
records 16 launches on distinct copies of the weights (so each reads its weight as a decoding
step does, not from the previous launch's cache) as one CUDA graph, replays it, and reports
microseconds per launch: the unfused modules (nn.LayerNorm, F.linear, GELU, add: what a step
runs without the kernel), and the kernel with each candidate (BLOCK_N, BLOCK_K, warps).
The default tiles (decode_linear.tiles) are marked with *.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

from tinylm.kernels import decode_linear  # noqa: E402

COPIES = 16
WIDTHS = {"char": (384, 65), "gpt2": (768, 50257)}
# (BLOCK_N, BLOCK_K, warps); at batch 1 BLOCK_K 0 (all of K in one round) and BLOCK_N negative:
# -E means a tile of E weights, BLOCK_N = E / K rounded up to a power of two (what `tiles` does)
CANDIDATES = [(-4096, 0, 4), (-8192, 0, 2), (-8192, 0, 4), (-8192, 0, 8), (-16384, 0, 4), (32, 256, 4), (64, 256, 4),
              (32, 128, 4)]


def resolve(tile: tuple[int, int, int], K: int) -> tuple[int, int, int]:
    n, k, w = tile
    if n < 0:
        n = max(2, min(64, -n // triton.next_power_of_2(K)))
    return n, k, w


def label(tile: tuple[int, int, int]) -> str:
    n, k, w = tile
    return f"{-n // 1024}k w{w}" if n < 0 else f"{n}x{k or 'K'} w{w}"


def layers(C: int, V: int) -> list[tuple[str, int, int, bool, str, bool]]:
    """(name, K, N, layernorm, activation, residual) of one block and the head."""
    V = (V + 63) // 64 * 64
    return [("ln1+qkv", C, 3 * C, True, "none", False), ("attn proj+res", C, C, False, "none", True),
            ("ln2+fc+gelu", C, 4 * C, True, "gelu", False), ("mlp proj+res", 4 * C, C, False, "none", True),
            ("ln_f+head", C, V, True, "none", False)]


def time_graph(fn, reps: int = 50) -> float:
    """Microseconds per call of fn (which makes COPIES launches), recorded as one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * COPIES)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="char,gpt2")
    p.add_argument("--rows", default="1,2,4,8,16")
    args = p.parse_args()
    dev, dt = "cuda", torch.bfloat16
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; us per launch, weights read from memory")
    for shape in args.shapes.split(","):
        C, V = WIDTHS[shape]
        for M in (int(r) for r in args.rows.split(",")):
            cands = CANDIDATES
            print(f"\n## {shape}, {M} row(s)\n")
            print("| layer | K | N | unfused | " + " | ".join(label(t) for t in cands) + " |")
            print("|---|---|---|---|" + "---|" * len(cands))
            for name, K, N, has_ln, act, has_res in layers(C, V):
                ws = [torch.randn(N, K, device=dev, dtype=dt) * 0.02 for _ in range(COPIES)]
                b = torch.randn(N, device=dev, dtype=dt) if name != "ln_f+head" else None
                lnw, lnb = torch.ones(K, device=dev, dtype=dt), torch.zeros(K, device=dev, dtype=dt)
                x = torch.randn(M, K, device=dev, dtype=dt)
                res = torch.randn(M, N, device=dev, dtype=dt) if has_res else None
                y = torch.empty(M, N, device=dev, dtype=dt)

                def unfused():
                    for w in ws:
                        h = F.layer_norm(x, (K,), lnw, lnb) if has_ln else x
                        h = F.linear(h, w, b)
                        if act == "gelu":
                            h = F.gelu(h, approximate="tanh")
                        if has_res:
                            h = res + h

                cells = [f"{time_graph(unfused):.2f}"]
                default = decode_linear.tiles(N, K)
                for tile in (resolve(t, K) for t in cands):
                    def fused(tile=tile):
                        for w in ws:
                            decode_linear.launch(x, w, b, lnw if has_ln else None, lnb if has_ln else None, 1e-5,
                                                 decode_linear.ACTIVATIONS[act], res, y, *tile)
                    cells.append(f"{time_graph(fused):.2f}" + ("*" if tile == default else ""))
                print(f"| {name} | {K} | {N} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
