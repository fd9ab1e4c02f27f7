#!/usr/bin/env python3
"""Generation speed: tinylm's decoding engine against HF transformers' GPT2LMHeadModel.generate
running the same weights, in the same process.

    python bench/bench_generate.py --device cpu                      # char shape on the CPU
    python bench/bench_generate.py --device cuda --shapes char       # GPU: CUDA graph and compiled decoding
    python bench/bench_generate.py --device cuda --shapes gpt2
    python bench/bench_generate.py --device cpu --weights fp32,fp16,int8  # + reduced-precision CPU weights

Shapes (random weights: decoding speed does not depend on their values):
    char  nanoGPT's shakespeare_char: 6 layers, 6 heads, 384 wide, context 256, vocab 65;
          500 new tokens (HF stops at the context: 246, so the ratio is taken at 246 for both)
    gpt2  GPT-2 124M: 12/12/768, context 1024, vocab 50257; 1000 new tokens
Every run starts from a 10-token prompt, greedy (--sampling adds temperature 0.8 / top-k 50 rows,
HF with the same settings) and never stops early (no EOS; HF gets min_new_tokens = max).

Before timing, the HF model is built from tinylm's state dict (`to_hf_gpt2`) and its logits are
checked against tinylm's in fp32 on the CPU (assert close), and greedy tokens are compared on the
device. Reported per (shape, batch, engine): new tokens per second summed over the batch, per
sequence, time to first token (prefill + first token, engine already built), setup (building
the engine: CUDA graph recording, compilation), and the ratio to HF. Output: a markdown table
on stdout; --json PATH also writes the raw numbers. Needs `transformers` (a bench extra).

--weights (CPU): tinylm rows for each kind of Linear weights (cpu_weights.py: fp32 as trained,
fp16, or int8 with bf16 activations), each a converted copy of the same model. HF always runs
the fp32 weights: it is the peer as shipped, so "vs HF" of an fp16/int8 row compares a lossy
tinylm with an exact HF. For those rows "top-1 = fp32" counts the positions of the fp32 greedy
sequence (prompt + new tokens, teacher-forced) where the converted model's most likely next token
is the fp32 model's; free-running greedy text instead diverges for good at its first flip, which
"greedy vs HF" reports.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tinylm.kernels.cpu_weights import check_kind, convert_linear_weights  # noqa: E402
from tinylm.util.errors import UsageError  # noqa: E402
from tinylm.generate.engine import Engine, SamplingConfig  # noqa: E402
from tinylm.model.gpt import GPT, GPTConfig  # noqa: E402

# name -> (GPTConfig fields, new tokens)
SHAPES = {
    "char": (dict(n_layer=6, n_head=6, n_embd=384, context_size=256, vocab_size=65), 500),
    "gpt2": (dict(n_layer=12, n_head=12, n_embd=768, context_size=1024, vocab_size=50257), 1000),
}
PROMPT_LEN = 10


# ---------------------------------------------------------------- tinylm -> HF GPT-2

def to_hf_gpt2(model: GPT):
    """tinylm GPT (learned positions, GELU, biases, tied head) -> an equal GPT2LMHeadModel.

    HF's GPT-2 uses Conv1D layers whose weight is (in, out), the transpose of nn.Linear's
    (out, in); its fused c_attn is our qkv Linear(C, 3C) with the same q|k|v order; GELU is the
    tanh approximation ("gelu_new"), LayerNorm eps 1e-5 in both. Our embedding is padded past the
    vocabulary; HF gets the real rows only."""
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: PLC0415 - a bench extra

    c = model.cfg
    shape = (c.positions, c.activation, c.bias, c.tie_weights, c.qk_norm, c.logit_softcap)
    if shape != ("learned", "gelu", True, True, False, 0.0):
        raise ValueError("only GPT-2-shaped models convert: learned positions, gelu, biases, tied head, no qk-norm/softcap")
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.context_size, n_embd=c.n_embd, n_layer=c.n_layer,
                                    n_head=c.n_head, n_inner=c.ff_size, activation_function="gelu_new",
                                    layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    bos_token_id=None, eos_token_id=None, pad_token_id=0))
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["wte.weight"][: c.vocab_size], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[f"{theirs}{b}.weight"], out[f"{theirs}{b}.bias"] = sd[f"{ours}{a}.weight"], sd[f"{ours}{a}.bias"]
        linears = (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj"))
        for a, b in linears:
            out[f"{theirs}{b}.weight"] = sd[f"{ours}{a}.weight"].t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
            out[f"{theirs}{b}.bias"] = sd[f"{ours}{a}.bias"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    hf.generation_config.eos_token_id = None
    hf.generation_config.bos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


@torch.inference_mode()
def check_conversion(model: GPT, hf) -> float:
    """Max |logit difference| between tinylm and HF on random ids, fp32 on the CPU; asserts close."""
    V = model.cfg.vocab_size
    ids = torch.randint(0, V, (2, min(64, model.cfg.context_size)), generator=torch.Generator().manual_seed(0))
    ours = model(ids)[0][..., :V]
    theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    return (theirs - ours).abs().max().item()


# ---------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def sampling(args, n_new: int) -> SamplingConfig:
    if args.sampled:
        return SamplingConfig(max_new_tokens=n_new, temperature=0.8, top_k=50, seed=0)
    return SamplingConfig(max_new_tokens=n_new, temperature=0)


def hf_kwargs(sampled: bool, n_new: int) -> dict:
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0)
    return kw | (dict(do_sample=True, temperature=0.8, top_k=50, top_p=1.0) if sampled else dict(do_sample=False))


# A runner: {"engine", "weights", "new", "run": () -> ids, "first": () -> ids (one new token), "setup": seconds}.

def ours(model, prompt, lengths: list[int], decode: str, args, device, weights: str = "fp32") -> list[dict]:
    """One engine (one recording / compilation) for all lengths; `model` already holds `weights`."""
    sync(device)
    t0 = time.perf_counter()
    engine = Engine(model, prompt.size(0), model.cfg.vocab_size, sampling(args, max(lengths)), eos_id=None, decode=decode,
                    compile_mode=args.compile_mode)
    sync(device)
    setup = time.perf_counter() - t0
    first = lambda: engine(prompt, max_new_tokens=1)  # noqa: E731
    return [dict(engine=f"tinylm {engine.mode}", weights=weights, new=n, setup=setup, first=first,
                 run=lambda n=n: engine(prompt, max_new_tokens=n)) for n in lengths]


def theirs(hf, prompt, n_new: int, args) -> dict:
    kw, mask = hf_kwargs(args.sampled, n_new), torch.ones_like(prompt)
    return dict(engine="HF generate", weights="fp32", new=n_new, setup=0.0,
                run=lambda: hf.generate(prompt, attention_mask=mask, **kw),
                first=lambda: hf.generate(prompt, attention_mask=mask, **(kw | dict(max_new_tokens=1, min_new_tokens=1))))


@torch.inference_mode()
def measure(runners: list[dict], device: torch.device, repeats: int) -> None:
    """Warm each runner up once, then time them in turns (round-robin, so a busy spell on a
    shared machine hits all of them alike); keep the best of `repeats` of each."""
    for r in runners:
        out = r["run"]()
        assert out.shape[1] == PROMPT_LEN + r["new"], out.shape
        r["tokens"], r["seconds"], r["ttft"] = out[:, PROMPT_LEN:], float("inf"), float("inf")
    for _ in range(repeats):
        for r in runners:
            r["seconds"] = min(r["seconds"], timed(r["run"], device))
            r["ttft"] = min(r["ttft"], timed(r["first"], device))


# ---------------------------------------------------------------- one shape

def first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a.cpu() != b.cpu()).any(dim=0).nonzero()
    return "identical" if diff.numel() == 0 else f"differ from token {int(diff[0])} of {a.size(1)}"


@torch.inference_mode()
def top1_agreement(model, ref_model, seq: torch.Tensor, start: int) -> tuple[int, int]:
    """seq (1, T): a greedy sequence of ref_model. -> (positions from `start` on where model's most
    likely next token is ref_model's, how many positions): teacher-forced, so one flip does not
    change every later comparison. T must fit the context."""
    ours_, _ = model(seq)  # (1, T, V)
    ref, _ = ref_model(seq)
    agree = ours_[0, start - 1:-1].argmax(-1) == ref[0, start - 1:-1].argmax(-1)  # (T - start,)
    return int(agree.sum()), agree.numel()


def converted(model: GPT, kinds: list[str]) -> dict[str, GPT]:
    """kind -> the model with Linear weights of that kind (fp32: the model itself)."""
    out = {}
    for kind in kinds:
        out[kind] = model if kind == "fp32" else copy.deepcopy(model)
        convert_linear_weights(out[kind], kind)
    return out


def bench_shape(name: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    fields, n_new = SHAPES[name]
    n_new = args.tokens or n_new
    torch.manual_seed(0)
    model = GPT(GPTConfig(**fields)).eval()
    hf = None
    if args.hf:
        hf = to_hf_gpt2(model)
        print(f"[{name}] HF conversion: max |logit diff| {check_conversion(model, hf):.2e} (fp32, CPU)", file=sys.stderr)
        hf = hf.to(device=device, dtype=dtype)
    model = model.to(device=device, dtype=dtype)
    fp32_model = copy.deepcopy(model) if set(args.weights) - {"fp32"} else None  # the reference for "top-1 = fp32"
    models = converted(model, args.weights)
    n_hf = min(n_new, fields["context_size"] - PROMPT_LEN)  # HF's learned positions end at the context
    rows = []
    for batch in args.batches:
        prompt = torch.randint(0, fields["vocab_size"], (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
        prompt = prompt.expand(batch, -1).contiguous().to(device)
        lengths = sorted({n_new, n_hf}, reverse=True)
        runners = [r for kind, m in models.items() for decode in args.decodes if (kind, decode) != ("fp16", "compile")
                   for r in ours(m, prompt, lengths, decode, args, device, kind)]  # fp16 does not compile (generate.py)
        ref = theirs(hf, prompt, n_hf, args) if hf is not None else None
        measure(runners + ([ref] if ref else []), device, args.repeats)
        fp32_tokens = {r["new"]: r["tokens"] for r in runners if r["weights"] == "fp32"}
        for r in runners + ([ref] if ref else []):
            rate = batch * r["new"] / r["seconds"]
            print(f"[{name} b={batch}] {r['engine']:16s} {r['weights']} {r['new']:5d} tokens: {rate:9.0f} tok/s", file=sys.stderr)
            vs_hf, agree = None, ""
            if ref is not None and r is not ref:
                if r["new"] == ref["new"]:  # like for like only
                    vs_hf = rate / (batch * ref["new"] / ref["seconds"])
                if not args.sampled:
                    agree = first_difference(r["tokens"][:, :ref["new"]], ref["tokens"])
            top1 = ""
            seq_len = PROMPT_LEN + r["new"]
            if r["weights"] != "fp32" and not args.sampled and r["new"] in fp32_tokens and seq_len <= fields["context_size"]:
                seq = torch.cat([prompt[:1], fp32_tokens[r["new"]][:1]], dim=1)  # (1, T): row 0's fp32 greedy sequence
                top1 = "{}/{}".format(*top1_agreement(models[r["weights"]], fp32_model, seq, PROMPT_LEN))
            rows.append(dict(shape=name, batch=batch, engine=r["engine"], weights=r["weights"], new_tokens=r["new"], tok_s=rate,
                             tok_s_per_seq=rate / batch, ms_per_step=1000 * r["seconds"] / r["new"],
                             ttft_ms=1000 * r["ttft"], setup_s=r["setup"], vs_hf=vs_hf, greedy_vs_hf=agree, top1_vs_fp32=top1))
    return rows


def machine(device: torch.device) -> str:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), cpu)
    where = f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        where = torch.cuda.get_device_name()
    try:
        import transformers  # noqa: PLC0415

        hf = transformers.__version__
    except ImportError:
        hf = "not installed"
    return f"{where}; torch {torch.__version__}, transformers {hf}"


def table(rows: list[dict]) -> str:
    head = ("| shape | batch | engine | weights | new tokens | tok/s (batch) | tok/s per seq | ms/step | TTFT ms | setup s "
            "| vs HF | greedy vs HF | top-1 = fp32 |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        vs = f"{r['vs_hf']:.1f}x" if r["vs_hf"] else ""
        lines.append(f"| {r['shape']} | {r['batch']} | {r['engine']} | {r['weights']} | {r['new_tokens']} | {r['tok_s']:.0f} | "
                     f"{r['tok_s_per_seq']:.0f} | {r['ms_per_step']:.2f} | {r['ttft_ms']:.1f} | {r['setup_s']:.2f} | {vs} | "
                     f"{r['greedy_vs_hf']} | {r['top1_vs_fp32']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: cuda if available)")
    p.add_argument("--shapes", default=None, help="comma list of char, gpt2 (default: char on CPU, char,gpt2 on CUDA)")
    p.add_argument("--batches", default="1,16", help="comma list of batch sizes (default 1,16)")
    p.add_argument("--decodes", default=None, help="comma list of tinylm engines: eager, graph, compile "
                   "(default: eager on CPU, graph,compile on CUDA)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for --decodes compile, e.g. "
                   "max-autotune-no-cudagraphs (default: inductor's default)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tokens", type=int, default=0, help="new tokens (0 = the shape's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, interleaved; the best is reported")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default)")
    p.add_argument("--weights", default="fp32", help="comma list of tinylm Linear weight kinds, CPU only: fp32, fp16, "
                   "int8 (cpu_weights.py; HF always runs fp32)")
    p.add_argument("--sampled", action="store_true", help="temperature 0.8, top-k 50 instead of greedy (both engines)")
    p.add_argument("--no-hf", dest="hf", action="store_false", help="skip the HF transformers baseline")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = (args.shapes or ("char,gpt2" if device.type == "cuda" else "char")).split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.decodes = (args.decodes or ("graph,compile" if device.type == "cuda" else "eager")).split(",")
    args.weights = args.weights.split(",")
    try:
        for kind in args.weights:
            check_kind(kind, device)
    except UsageError as e:
        p.error(str(e))
    rows = [r for name in shapes for r in bench_shape(name, args, device, dtype)]
    print(f"Machine: {machine(device)}; dtype {str(dtype).replace('torch.', '')}; "
          f"{'sampled (T 0.8, top-k 50)' if args.sampled else 'greedy'}; prompt {PROMPT_LEN} tokens; best of {args.repeats}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
