"""Where tinylm chooses its fast paths: the one place that knows when each kernel applies.

Every fast path in kernels/ replaces one plain function and is tested equal to it:
    training   compiled_blocks  (compiled.py)        for Block.forward           --compile blocks
               fused_head_loss  (head_loss.py)       for step.plain_head_loss    CUDA, wide heads
    decoding   decode_attention (decode_attention.py) for KVCache store + attend  CUDA, one token a row
               block_kernel     (kernels/decode_linear.py)   for Block.forward           CUDA, <= MAX_ROWS rows
               decode_head      (kernels/decode_linear.py)   for ln_f + lm_head          likewise
               store_by_index, attend_written_out (compiled.py) for the cache    --decode compile
               cpu_weight_layout (kernels/cpu_weights.py)    a weight layout, same values CPU decoding
The model (model/) never imports this package: callers pass what is chosen here into
`GPT.trunk(block_kernel=...)`, `GPT.head(kernel=...)` and the KVCache's replaceable steps.
Kernel modules that need triton are imported only once a CUDA path asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..model.gpt import BlockKernel, run_block

# The fused head loss pays from this many outputs: below it the logits are small, and importing
# triton's op machinery (torch._dynamo with it, ~3 s) would cost a short char-level run more than
# it saves (GPT-2 124M: 26.6 -> 25.4 ms a step on an H200, bench/RESULTS.md).
FUSED_CE_MIN_VOCAB = 8192
# The fused decode attention walks the slots of a head on one SM; past ~600 filled slots SDPA is
# faster (timings in decode_attention.py).
FUSED_ATTENTION_MAX_LEN = 512
DECODE_FAST = ("attention", "linear")  # the decoding fast paths, all on by default


@dataclass
class TrainKernels:
    block: BlockKernel = run_block
    head_loss: Callable | None = None  # (model, h, targets) -> loss; None = step.plain_head_loss


def training_kernels(model, device: torch.device, compile_blocks: bool = False, fused_loss: bool = True) -> TrainKernels:
    """What the training forward runs on `device` (see train/step.training_forward)."""
    chosen = TrainKernels()
    if compile_blocks:
        from .compiled import compiled_blocks  # noqa: PLC0415

        chosen.block = compiled_blocks(model)
    cfg = model.cfg
    if (fused_loss and device.type == "cuda" and cfg.padded_vocab >= FUSED_CE_MIN_VOCAB and cfg.logit_softcap == 0
            and model.lm_head.bias is None):
        from . import head_loss  # noqa: PLC0415 - imports triton: CUDA runs only

        if head_loss.AVAILABLE:
            chosen.head_loss = head_loss.fused_head_loss
    return chosen


@dataclass
class DecodeKernels:
    """For steps of one token per row: how blocks run and how the head is computed."""
    block: BlockKernel = run_block
    head: Callable | None = None  # (ln_f, lm_head, x (B, C)) -> logits; None = the plain head


def decode_kernels(model, cache, batch: int, fast: tuple[str, ...] = DECODE_FAST, compiled: bool = False) -> DecodeKernels:
    """Set up `cache` (its replaceable store / attention / one-token kernel) and the model's
    weights for decoding `batch` rows, and return the block and head kernels for one-token steps.
    fast: which CUDA fast paths may be used ("attention", "linear"); () = the plain path."""
    device = cache.k.device
    chosen = DecodeKernels()
    if device.type == "cpu":
        from .cpu_weights import cpu_weight_layout  # noqa: PLC0415

        cpu_weight_layout(model)
    if compiled:
        from .compiled import attend_written_out, store_by_index  # noqa: PLC0415

        cache.store = store_by_index
        if device.type == "cpu":
            cache.attend_slots = attend_written_out
    if device.type != "cuda":
        return chosen
    if "attention" in fast and cache.max_len <= FUSED_ATTENTION_MAX_LEN:
        from . import decode_attention  # noqa: PLC0415

        if decode_attention.AVAILABLE:
            cache.one_token = decode_attention.decode_attention
    if "linear" in fast:
        from . import decode_linear  # noqa: PLC0415

        if decode_linear.AVAILABLE and batch <= decode_linear.MAX_ROWS:
            chosen.block, chosen.head = decode_linear.block_kernel, decode_linear.decode_head
    return chosen
