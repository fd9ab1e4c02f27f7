"""Training benchmarks (issue 4).

  throughput  tokens/s and MFU of one training step at GPT-2 124M shape (12 layers, 12 heads, 768
              wide, context 1024, vocabulary 50304, micro-batch 12, bf16), tinylm variants and HF
              transformers' GPT2LMHeadModel measured in the same process, same optimizer (fused AdamW).
  ttl         time-to-loss: runs `python -m tinylm train ...` as a subprocess on tiny Shakespeare and
              records, from the moment the process is launched, when each validation line arrives.
              Reports the first time val <= --target and the best val within --window seconds.

Run on the GPU machine from the repo root, e.g.
    PYTHONPATH=. python bench/bench_train.py throughput
    PYTHONPATH=. python bench/bench_train.py ttl --data .carry/tinyshakespeare.txt --name nanogpt -- --preset tiny ...
Timing: CUDA events around whole steps after warm-up; median of the timed steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 FLOP/s (datasheet)


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_size: int, T: int) -> float:
    """6N for the matmuls (forward + backward) plus 12*L*H*Q*T for attention (PaLM appendix B)."""
    return 6 * n_params + 12 * n_layer * n_head * head_size * T


def time_steps(step_fn, warmup: int, iters: int) -> list[float]:
    import torch

    for _ in range(warmup):
        step_fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step_fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return times


def make_step(model, batch, opt, loss_fn):
    import torch

    x, y = batch

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# variant flag -> inductor option for torch.compile(options=...)
INDUCTOR_FLAGS = {"nosplit": ("split_reductions", False),  # reductions in one stage
                  "cdt": ("coordinate_descent_tuning", True),  # tune each Triton kernel's launch config
                  "agg": ("aggressive_fusion", True)}  # fuse nodes that share no memory access too


def bench_tinylm(variant: str, B: int, T: int, V: int, warmup: int, iters: int) -> dict:
    import torch

    from tinylm.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    # flags after the variant, e.g. graphfull-nobias-unfusedce:
    #   nobias     nanoGPT bench.py's shape (no biases)
    #   unfusedce  the head + F.cross_entropy instead of kernels/head_loss.py's fused loss
    #   ma         torch.compile mode max-autotune-no-cudagraphs (inductor's Triton GEMMs, epilogue fusion)
    #   tma        with ma: inductor's persistent TMA matmul templates (Hopper)
    #   nosplit, cdt, agg: inductor options (INDUCTOR_FLAGS)
    #   accumK     K micro-batches per optimizer step (--grad-accum K, as a real 124M run uses); tokens/s
    #              counts all K, so the optimizer's cost is spread over them
    #   bf16       experiment, not a recipe: parameters, optimizer state and activations all bf16, no
    #              autocast (the speed a bf16-weights step could reach; its numerics are not tinylm's)
    #   ddp1       data parallelism's gradient all-reduce (distributed.py) over a one-process NCCL group:
    #              what the flat copy in and out and the collective cost a step, with no other process
    variant, *flags = variant.split("-")
    from tinylm.kernels.select import training_kernels
    from tinylm.train.step import plain_head_loss, training_forward

    cfg = GPTConfig(vocab_size=V, context_size=T, n_layer=12, n_head=12, n_embd=768, vocab_multiple=64,
                    bias="nobias" not in flags)
    model = GPT(cfg).cuda()
    n_params = model.num_params() - model.wpe.weight.numel()
    amp_dtype = torch.bfloat16
    if "bf16" in flags:
        model, amp_dtype = model.to(torch.bfloat16), None
    # the training forward as the Trainer builds it (kernels/select.py), minus the fused loss for unfusedce
    kernels = training_kernels(model, torch.device("cuda"), compile_blocks=variant == "regional",
                               fused_loss="unfusedce" not in flags)
    fwd = training_forward(model, kernels.block, kernels.head_loss or plain_head_loss)
    if variant in ("full", "graphfull"):
        if "tma" in flags:
            import torch._inductor.config as inductor_config

            inductor_config.triton.enable_persistent_tma_matmul = True
        options = {option: value for flag, (option, value) in INDUCTOR_FLAGS.items() if flag in flags}
        if options:
            fwd = torch.compile(fwd, dynamic=False, options=options)
        else:
            fwd = torch.compile(fwd, dynamic=False, mode="max-autotune-no-cudagraphs" if "ma" in flags else None)
    x = torch.randint(0, V, (B, T), device="cuda")
    y = torch.randint(0, V, (B, T), device="cuda")
    from tinylm.train.trainer import TrainConfig, param_groups, train_step

    k = next((int(f[5:]) for f in flags if f.startswith("accum")), 1)
    tc = TrainConfig(max_steps=1, lr=6e-4, beta1=0.9, beta2=0.95, weight_decay=0.1, grad_clip=1.0, grad_accum=k)
    dist = one_process_group() if "ddp1" in flags else None
    if variant in ("graph", "graphfull"):  # tinylm's --cuda-graph step (graphfull: recording the compiled forward)
        from tinylm.train.graph_step import GraphedStep

        g = GraphedStep(model, param_groups(model, tc), tc, amp_dtype, (B, T), forward=fwd, dist=dist)

        def step():
            g([(x, y)] * k, 6e-4)
    else:  # tinylm's eager step: the same clipping folded into fused AdamW, bf16 autocast
        opt = torch.optim.AdamW(param_groups(model, tc), lr=6e-4, betas=(0.9, 0.95), fused=True)

        def step():
            train_step(model, opt, [(x, y)] * k, tc, torch.device("cuda"), amp_dtype, dist, forward=fwd)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    step()
    torch.cuda.synchronize()
    first = time.time() - t0
    times = time_steps(step, warmup, iters)
    return _row("-".join(["tinylm-" + variant, *flags]), times, k * B * T, flops_per_token(n_params, 12, 12, 64, T), first)


def one_process_group():
    """A one-process NCCL group on this GPU, as torchrun --nproc_per_node=1 would start (see distributed.py)."""
    import torch
    import torch.distributed

    from tinylm.train.distributed import Dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    return Dist(rank=0, world=1, local_rank=0, device=torch.device("cuda", torch.cuda.current_device()))


def bench_hf(variant: str, B: int, T: int, V: int, warmup: int, iters: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=768, n_layer=12, n_head=12,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).cuda()  # transformers picks SDPA attention where available
    n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    fwd = torch.compile(model, dynamic=False) if variant == "compiled" else model
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x = torch.randint(0, V, (B, T), device="cuda")
    step = make_step(fwd, (x, x), opt, lambda m, a, b: m(input_ids=a, labels=b).loss)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    step()
    torch.cuda.synchronize()
    first = time.time() - t0
    times = time_steps(step, warmup, iters)
    return _row(f"hf-{variant}", times, B * T, flops_per_token(n_params, 12, 12, 64, T), first)


def _row(name, times, tokens, fpt, first) -> dict:
    import torch

    med = statistics.median(times)
    return {"name": name, "ms_per_iter": med * 1e3, "tokens_per_s": tokens / med,
            "mfu": tokens * fpt / med / PEAK_BF16, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "first_step_s": first, "spread_ms": (max(times) - min(times)) * 1e3}


def cmd_throughput(args) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for v in args.variants.split(","):
        kind, _, variant = v.partition(":")
        fn = bench_tinylm if kind == "tinylm" else bench_hf
        rows.append(fn(variant, args.batch, args.context, args.vocab, args.warmup, args.iters))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()} | B={args.batch} T={args.context} V={args.vocab}")
    print(f"{'variant':18} {'ms/iter':>8} {'tok/s':>10} {'MFU':>6} {'peak GiB':>9} {'1st step s':>10}")
    for r in rows:
        print(f"{r['name']:18} {r['ms_per_iter']:8.2f} {r['tokens_per_s']:10.0f} {r['mfu']*100:5.1f}% {r['peak_mem_gib']:9.2f} {r['first_step_s']:10.1f}")


VAL_RE = re.compile(r"Validation loss: ([0-9.]+)")


def cmd_ttl(args, train_args: list[str]) -> None:
    cmd = [sys.executable, "-m", "tinylm", "train", "-d", args.data, "-o", args.out, "--force", *train_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    hits, first_hit, log_lines = [], None, []
    for line in proc.stderr:
        t = time.time() - t0
        log_lines.append(f"{t:7.2f} {line.rstrip()}")
        m = VAL_RE.search(line)
        if m:
            val = float(m.group(1))
            hits.append((t, val))
            if first_hit is None and val <= args.target:
                first_hit = t
    rc = proc.wait()
    total = time.time() - t0
    best_in_window = min((v for t, v in hits if t <= args.window), default=float("nan"))
    best = min((v for _, v in hits), default=float("nan"))
    if args.log:
        with open(args.log, "w") as f:
            f.write("\n".join(log_lines) + "\n")
    print(json.dumps({"name": args.name, "rc": rc, "first_at_or_below_target_s": first_hit, "target": args.target,
                      f"best_within_{args.window:g}s": best_in_window, "best": best, "total_s": round(total, 1),
                      "evals": [(round(t, 1), v) for t, v in hits], "args": train_args}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--variants", default="tinylm:eager,tinylm:regional,tinylm:full,hf:eager,hf:compiled")
    t.add_argument("--batch", type=int, default=12)
    t.add_argument("--context", type=int, default=1024)
    t.add_argument("--vocab", type=int, default=50304)
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--iters", type=int, default=30)
    t = sub.add_parser("ttl")
    t.add_argument("--data", required=True)
    t.add_argument("--name", default="run")
    t.add_argument("--out", default="/tmp/ttl.model")
    t.add_argument("--target", type=float, default=1.47)
    t.add_argument("--window", type=float, default=60.0)
    t.add_argument("--log", default=None, help="write the child's timestamped log here")
    argv = sys.argv[1:]
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = p.parse_args(argv)
    if args.cmd == "throughput":
        cmd_throughput(args)
    else:
        cmd_ttl(args, rest)


if __name__ == "__main__":
    main()
