"""Where a decoding step's time goes on the GPU (default: the char shape at batch 1, bf16).

    PYTHONPATH=. python bench/profile_decode.py [--decodes graph,compile] [--shape char|gpt2] [--batch 1]

A decode mode with the suffix "-unfused" runs with Engine(fast=("attention",)), the fused linear kernels off (no decode_linear.py
kernels), e.g. --decodes graph,graph-unfused.

For each decode mode it reports, per generated token:
- wall: Engine.__call__ generating --tokens tokens (the host loop included),
- replay: the recorded step replayed back to back with nothing else (the GPU's pace),
- kernels and GPU busy time per step from torch.profiler over 100 replays, and the top kernels.
If wall >> replay, the host loop is the bottleneck; if replay ~ busy, the kernels themselves are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinylm.generate.engine import Engine, SamplingConfig  # noqa: E402

from tinylm.model.gpt import GPT, GPTConfig  # noqa: E402

SHAPES = {"char": dict(n_layer=6, n_head=6, n_embd=384, context_size=256, vocab_size=65),
          "gpt2": dict(n_layer=12, n_head=12, n_embd=768, context_size=1024, vocab_size=50257)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--decodes", default="graph,compile")
    p.add_argument("--shape", default="char")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPES[args.shape])).cuda().to(torch.bfloat16).eval()
    V = model.cfg.vocab_size
    prompt = torch.randint(0, V, (args.batch, 10), device="cuda")
    for name in args.decodes.split(","):
        decode = name.removesuffix("-unfused")
        fused = decode == name
        eng = Engine(model, args.batch, V, SamplingConfig(max_new_tokens=args.tokens, temperature=0), decode=decode,
                     fast=("attention", "linear") if fused else ("attention",))
        with torch.inference_mode():
            eng(prompt)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(3):
                eng(prompt)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) / (3 * args.tokens) * 1e6
            eng(prompt, max_new_tokens=1)  # rewind to a short sequence: replays below stay inside the window
            n = min(100, model.cfg.context_size - 20)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(n):
                eng._step()
            torch.cuda.synchronize()
            replay = (time.perf_counter() - t) / n * 1e6
            eng(prompt, max_new_tokens=1)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(n):
                    eng._step()
                torch.cuda.synchronize()
        kernels = [e for e in prof.events() if str(e.device_type) == "DeviceType.CUDA"]
        busy = sum(e.time_range.elapsed_us() for e in kernels) / n
        print(f"[{args.shape} b={args.batch} {eng.mode}{'' if fused else ' unfused'}] wall {wall:6.1f} us/token ({1e6 / wall:6.0f} tok/s)   "
              f"replay {replay:6.1f} us/step   {len(kernels) / n:5.1f} kernels/step, GPU busy {busy:6.1f} us/step "
              f"({busy / max(1, len(kernels) / n):4.1f} us/kernel)", flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=90))


if __name__ == "__main__":
    main()
