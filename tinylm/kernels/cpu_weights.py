"""Reduced-precision Linear weights for decoding on the CPU (opt-in: `--weights fp16|int8`).

Owns: `convert_linear_weights(model, kind)`, which swaps a loaded model's nn.Linear layers for
small inference-only modules holding a packed copy of the weight, and those modules. It does not
touch the embedding (nor the output head tied to it), LayerNorms or the KV cache, and knows
nothing about sampling.

Why. Decoding one token is a chain of one-row matrix products: every step reads every weight
once, and at fp32 the char model's 42.7 MB of Linear weights do not fit the L3 cache of the CPUs
we measured, so a step waits on DRAM (bench/RESULTS.md, "Generation (issue 5)"). Fewer bytes per
weight fit the cache and stream faster. On a 2-core AMD EPYC (Zen 5), one thread, the 24
block-Linear products of that model: fp32 1621 us, bf16 (F.linear) 1276 us, fp16 weights 631 us,
int8 weights 341 us.

Kinds and the precision each gives up (measured on models/demo.model, a char model trained
for 3 minutes, over 256 teacher-forced positions; "rel" = |logits - fp32 logits| / |fp32 logits|
after centring, "top-1" = positions whose most likely token is fp32's):
    fp32  nothing is converted (the default).
    fp16  weights rounded to IEEE half (11-bit significand); activations, accumulation and bias
          stay fp32 (fbgemm's fp16-weight GEMM). rel ~1e-4, top-1 100%.
    int8  weight-only symmetric int8 with one scale per output row (scale = max|row| / 127: a
          weight is off by up to half a step), and each layer's input and output rounded to
          bf16 (8-bit significand) around torch._weight_int8pack_mm; bias added in fp32.
          rel ~0.4%, top-1 99%: greedy text drifts from fp32's after a while.

Which to pick. int8 is fastest for one row at a time; for many rows (batch 16, long prefills)
the int8 kernel turns compute-bound and fp16's GEMM wins (bench/bench_generate.py --weights).

The converted modules have no gradients and live on the CPU only: convert a model for
generation, after loading it, and keep an unconverted copy for training or saving.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..util.errors import UsageError

KINDS = ("fp32", "fp16", "int8")


class Fp16Linear(nn.Module):
    """y = x W^T + b with W stored as fp16 in fbgemm's packed layout; x, y and b stay fp32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float().contiguous()  # (out, in); cpu_weight_layout may have transposed it in memory
        b = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.packed = torch.ops.quantized.linear_prepack_fp16(w, b)  # opaque: not a parameter, not in state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed).to(x.dtype)  # (..., out)


class Int8Linear(nn.Module):
    """y = bf16(x) (q * s)^T + b with q (out, in) int8 and one bf16 scale s per output row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Plain attributes, not buffers: a buffer is read through Module.__getattr__ on every call,
        # which at 24 calls per token costs ~5% of a step. The price: .to() and state_dict do not
        # see them (this module is CPU inference only anyway).
        self.qweight, self.scales = quantize_rows(linear.weight.detach().float())  # (out, in) int8, (out,) bf16
        self.bias = None if linear.bias is None else linear.bias.detach().clone()  # (out,), in the model's dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, in)
        # subtle: the op wants bf16 x; given fp32 x it takes a generic path ~20x slower
        y = torch._weight_int8pack_mm(rows, self.qweight, self.scales)  # (M, out) bf16
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias, y)  # (fp32 bias + bf16 y -> fp32: one op)
        return y.view(*x.shape[:-1], self.out_features)  # (..., out)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in) float -> (q (out, in) int8, s (out,) bf16), symmetric per row: w ~ q * s.
    Example: w = [[0.5, -1.0, 0.25]] -> s = [1/127], q = [[64, -127, 32]] (rounded to nearest).
    subtle: s is rounded to bf16 *before* dividing, so q * s is exactly what the op multiplies by."""
    s = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)  # (out,); an all-zero row keeps q = 0
    q = torch.round(w / s.float()[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
    return q.contiguous(), s  # contiguous: w may be stored transposed (cpu_weight_layout), the op wants rows


def check_kind(kind: str, device: torch.device | str = "cpu") -> None:
    """UsageError unless `kind` can run here: a known kind, on the CPU, with the op in this torch build."""
    if kind not in KINDS:
        raise UsageError(f"--weights must be one of {', '.join(KINDS)}, got {kind!r}")
    device = torch.device(device)
    if kind == "fp32":
        return
    if device.type != "cpu":
        raise UsageError(f"--weights {kind} is a CPU decoding option, but the model is on {device.type}; "
                         "add --device cpu, or drop --weights")
    if kind == "fp16" and "fbgemm" not in torch.backends.quantized.supported_engines:
        raise UsageError(f"--weights fp16 needs fbgemm, which this PyTorch build ({torch.__version__}) lacks; "
                         "use --weights int8 or fp32")
    if kind == "int8" and not hasattr(torch, "_weight_int8pack_mm"):
        raise UsageError(f"--weights int8 needs torch._weight_int8pack_mm, which this PyTorch build ({torch.__version__}) "
                         "lacks; use --weights fp16 or fp32")


CONVERTERS = {"fp16": Fp16Linear, "int8": Int8Linear}  # kind -> module built from an nn.Linear


@torch.no_grad()
def convert_linear_weights(model: nn.Module, kind: str) -> int:
    """Replace every nn.Linear of `model` (in place) by its `kind` counterpart, except a head
    that shares the token embedding's weight (tied: converting it would keep a second copy of the
    embedding). Returns how many layers were converted; fp32 converts none."""
    wte = getattr(getattr(model, "wte", None), "weight", None)
    device = next(model.parameters(), torch.empty(0)).device
    check_kind(kind, device)
    if kind == "fp32":
        return 0
    convert = CONVERTERS[kind]
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and child.weight is not wte]  # (module, attribute, Linear)
    for parent, name, child in targets:
        setattr(parent, name, convert(child))
    return len(targets)


def cpu_weight_layout(model) -> None:
    """Store each Linear weight transposed in memory, (in, out) row-major, keeping its values,
    shape and Parameter. F.linear then gives BLAS x @ W with W in its natural layout, and a
    one-row product (decoding) reads it ~1.7x faster than (out, in) on the CPUs we measured
    (bench/RESULTS.md; HF's GPT-2 stores Conv1D weights this way). The tied head keeps the
    embedding's layout. Idempotent; training still works on the re-laid weights."""
    with torch.inference_mode(False):  # subtle: weights made in inference mode could never be trained again
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight is not model.wte.weight and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
