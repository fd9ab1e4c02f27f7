"""The two computations the training loop repeats: one optimizer step and one exact evaluation.

Owns what happens inside a step: bf16 autocast where it applies, gradient accumulation over
micro-batches, the data-parallel average of the gradients (distributed.py), and the clipped,
skip-if-not-finite update (optim.clipped_step). The CUDA-graph step (graph_step.py) records the
same sequence. Knows nothing about schedules, checkpoints, logging or when to stop (train.py).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import eval_windows
from .distributed import Dist
from .optim import clipped_step

if TYPE_CHECKING:
    from .train import TrainConfig


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor | np.ndarray, context: int, batch_size: int, device: torch.device,
             dtype: torch.dtype | None = None, dist: Dist | None = None) -> float:
    """Mean next-token cross-entropy over every token of `tokens` (exact, not sampled).
    `tokens`: an int64 tensor, a `tokenstream.TokenWindows`, or a numpy array / token-file memmap,
    read one batch at a time (see `data.eval_windows`); the loss is the same for each.
    With `dist`, each process measures every world-th batch and the sums are added up, so every
    process returns the loss over all of `tokens`."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # (loss x tokens, tokens)
    for i, (x, y) in enumerate(eval_windows(tokens, context, batch_size)):
        if dist is not None and i % dist.world != dist.rank:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            _, loss = model(x, y)
        n = (y != -1).sum()
        sums += torch.stack([loss.double() * n, n.double()])
    if dist is not None:
        dist.sum_(sums)
    model.train(was_training)
    total, count = sums.tolist()
    return total / max(count, 1)


def train_step(model, opt, micro_batches, cfg: TrainConfig, device, dtype, dist: Dist | None = None) -> torch.Tensor:
    """One optimizer step over `micro_batches` [(x, y), ...]; returns the mean loss as a device
    tensor (no host sync), NaN when the step was skipped for a non-finite loss or gradient.
    With `dist`, the gradients and the loss are the means over all processes."""
    total = torch.zeros((), device=device)
    for x, y in micro_batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            _, loss = model(x, y)
        # subtle: divide so the accumulated gradient is the mean over all micro-batches, equal to
        # the gradient of one batch len(micro_batches) times larger.
        (loss / len(micro_batches)).backward()
        total += loss.detach()
    if dist is not None:
        dist.average_gradients_(model.parameters(), total)
    ok = clipped_step(opt, model.parameters(), cfg.grad_clip, total)
    opt.zero_grad(set_to_none=True)
    return torch.where(ok, total / len(micro_batches), math.nan)
