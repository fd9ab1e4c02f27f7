"""Where a training step's time goes at a given shape (default: nanoGPT shakespeare_char).

    PYTHONPATH=. python bench/profile_train.py [--variants eager,regional,full] [--profile regional]

Prints ms/step (median of CUDA-event-timed steps after warm-up) for each variant, using the same
step as tinylm's trainer (train.train_step: bf16 autocast, clipping, fused AdamW), then the top
CUDA kernels of one variant from torch.profiler. Also prints how long the start-up pieces take.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

T_START = time.time()
import torch  # noqa: E402

T_TORCH = time.time()


def amp(args):
    """The step's autocast dtype: bf16, or none when the model itself is bf16 (--pure-bf16)."""
    return None if args.pure_bf16 else torch.bfloat16


def build(args, variant):
    from tinylm.model.gpt import GPT, GPTConfig
    from tinylm.train.trainer import TrainConfig, make_optimizer

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, context_size=args.context, n_layer=args.layers, n_head=args.heads,
                    n_embd=args.embd, d_ff=args.ff, dropout=args.dropout, positions=args.positions,
                    activation=args.activation, qk_norm=args.qk_norm, bias=not args.no_bias)
    model = GPT(cfg).cuda()
    if args.pure_bf16:  # experiment: parameters, optimizer state and activations all bf16, no autocast
        model = model.to(torch.bfloat16)
    tc = TrainConfig(max_steps=1, optimizer=args.optimizer, lr=1e-3)
    opt = make_optimizer(model, tc, torch.device("cuda"))
    from tinylm.kernels.select import training_kernels
    from tinylm.train.step import plain_head_loss, training_forward

    kernels = training_kernels(model, torch.device("cuda"), compile_blocks=variant == "regional")
    plain = fwd = training_forward(model, kernels.block, kernels.head_loss or plain_head_loss)  # (x, y) -> loss
    if variant == "full":
        fwd = torch.compile(plain, dynamic=False)
    elif variant == "full-ro":
        fwd = torch.compile(plain, dynamic=False, mode="reduce-overhead")
    elif variant in ("graph", "graphfull"):  # graphfull: the CUDA graph records the compiled forward
        from tinylm.train.graph_step import GraphedStep
        from tinylm.train.trainer import param_groups

        if variant == "graphfull":
            fwd = torch.compile(plain, dynamic=False)
        g = GraphedStep(model, param_groups(model, tc), tc, amp(args), (args.batch, args.context), forward=fwd)
        return model, g, g.opt, tc
    return model, fwd, opt, tc


def run(args, variant, profile=False):
    from tinylm.train.trainer import train_step as eager_step

    model, fwd, opt, tc = build(args, variant)  # fwd: a training forward, or the graphed step

    def train_step(fwd, opt, mb, tc, dev, dtype):
        if variant in ("graph", "graphfull"):
            return fwd(mb, 1e-3)
        if variant == "full-ro":
            torch.compiler.cudagraph_mark_step_begin()
        return eager_step(model, opt, mb, tc, dev, dtype, forward=fwd)

    data = torch.randint(0, args.vocab, (args.batch, args.context + 1), device="cuda")
    mb = [(data[:, :-1], data[:, 1:])]
    dev = torch.device("cuda")
    t0 = time.time()
    train_step(fwd, opt, mb, tc, dev, amp(args))
    torch.cuda.synchronize()
    first = time.time() - t0
    for _ in range(10):
        train_step(fwd, opt, mb, tc, dev, amp(args))
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        train_step(fwd, opt, mb, tc, dev, amp(args))
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    med = statistics.median(times)
    tok = args.batch * args.context
    print(f"{variant:10} {med:7.2f} ms/step  {tok / med * 1e3 / 1e6:6.2f} M tok/s  first step {first:5.1f} s  "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=args.shapes) as p:
            for _ in range(5):
                train_step(fwd, opt, mb, tc, dev, amp(args))
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
        categories(p, 5, args.top)
        if args.shapes:  # which calls the aten kernels come from: operators by input shape
            print(p.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=args.rows,
                                                                  max_name_column_width=40, max_shapes_column_width=90))


# kernel-name fragments -> category, first match wins (names from the H200 profiles in RESULTS.md)
CATEGORIES = [("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
              ("matmul", ("gemm", "sm90_", "cutlass", "nvjet", "ampere_", "cublas")),
              ("optimizer", ("adam", "multi_tensor", "foreach", "norm_kernel", "lpnorm")),
              ("fused (triton)", ("triton",)),
              ("elementwise / reduce (aten)", ("elementwise", "reduce", "vectorized", "softmax", "cross", "nll", "embedding", "index"))]


def categories(p, steps: int, top: int = 4) -> None:
    """GPU time per step summed by kernel category (only device-side kernel events)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    names: dict[str, dict[str, float]] = {}
    for e in p.events():
        if getattr(e, "device_type", None) is None or str(e.device_type) != "DeviceType.CUDA":
            continue
        name = e.name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        sums[cat] = sums.get(cat, 0.0) + e.time_range.elapsed_us() / 1e3
        counts[cat] = counts.get(cat, 0) + 1
        names.setdefault(cat, {})
        names[cat][e.name[:110]] = names[cat].get(e.name[:110], 0.0) + e.time_range.elapsed_us() / 1e3
    total = sum(sums.values())
    print(f"GPU kernel time per step by category (sum {total / steps:.2f} ms/step):")
    for cat, ms in sorted(sums.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:30} {ms / steps:7.2f} ms  {counts[cat] / steps:6.0f} kernels")
        for name, t in sorted(names[cat].items(), key=lambda kv: -kv[1])[:top]:
            print(f"      {t / steps:6.2f} ms  {name}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="eager,regional,full")
    p.add_argument("--profile", default="", help="variant to profile")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--embd", type=int, default=384)
    p.add_argument("--ff", type=int, default=1536)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=69)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--positions", default="learned")
    p.add_argument("--activation", default="gelu")
    p.add_argument("--qk-norm", action="store_true")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--sdpa", default="", help="SDPA backends in priority order, e.g. cudnn,flash (default: PyTorch's)")
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--pure-bf16", action="store_true",
                   help="experiment: model and optimizer state in bf16, no autocast (an upper bound, not a recipe)")
    p.add_argument("--top", type=int, default=4, help="kernels listed per category")
    p.add_argument("--shapes", action="store_true", help="also list the profiled operators by input shape")
    args = p.parse_args()
    if args.sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        sdpa_kernel([names[n] for n in args.sdpa.split(",")], set_priority=True).__enter__()
    t = time.time()
    torch.zeros(1, device="cuda")
    t_cuda = time.time() - t
    t = time.time()
    importlib.import_module("torch._dynamo")
    importlib.import_module("torch._inductor")
    t_dyn = time.time() - t
    t = time.time()
    importlib.import_module("tinylm")
    t_tl = time.time() - t
    print(f"startup: import torch {T_TORCH - T_START:.2f} s, CUDA init {t_cuda:.2f} s, import dynamo/inductor {t_dyn:.2f} s, "
          f"import tinylm {t_tl:.2f} s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    for v in args.variants.split(","):
        run(args, v, profile=(v == args.profile))


if __name__ == "__main__":
    main()
