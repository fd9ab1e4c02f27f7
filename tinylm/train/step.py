"""The computations the training loop repeats: one optimizer step and one exact evaluation.

Owns what happens inside a step: autocast where it applies, gradient accumulation over
micro-batches, the data-parallel average of the gradients (train/distributed.py), and the clipped,
skip-if-not-finite update (optim.clipped_step). `step_body` is that sequence, written once:
`train_step` runs it eagerly, train/graph_step.py records it as a CUDA graph. Knows nothing about
schedules, checkpoints, logging or when to stop (trainer.py).

A training forward is a function (x, y) -> loss. `training_forward` builds it from the model's
own trunk and the kernels that kernels/select.py chose (a compiled block, the fused head loss);
evaluation always runs the plain `model(x, y)`.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..data.batches import eval_windows
from ..model.gpt import lm_loss, run_block
from .distributed import Dist
from .optim import clipped_step

if TYPE_CHECKING:
    from .config import TrainConfig

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, T), y (B, T)) -> mean loss ()


def plain_head_loss(model, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of the model's own head on the residual stream h (B, T, C): the reference that
    kernels/head_loss.py's fused op must equal."""
    return lm_loss(model.head(h), targets)


def training_forward(model, block_kernel=run_block, head_loss=plain_head_loss) -> Forward:
    """(x, y) -> loss through model.trunk and a head loss; the defaults are the plain path."""
    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return head_loss(model, model.trunk(x, block_kernel=block_kernel), y)

    return forward


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor | np.ndarray, context: int, batch_size: int, device: torch.device,
             dtype: torch.dtype | None = None, dist: Dist | None = None) -> float:
    """Mean next-token cross-entropy over every token of `tokens` (exact, not sampled).
    `tokens`: an int64 tensor, a `tokenstream.TokenWindows`, or a numpy array / token-file memmap,
    read one batch at a time (see `data.batches.eval_windows`); the loss is the same for each.
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


def step_body(forward: Forward, params: Callable, opt, micro_batches, grad_clip: float, device: torch.device,
              dtype: torch.dtype | None, dist: Dist | None = None, after_step: Callable | None = None,
              stats: dict | None = None) -> torch.Tensor:
    """Forward and backward over `micro_batches` [(x, y), ...] already on the device, the
    gradients averaged over processes, then the clipped update; returns the mean loss as a device
    tensor (no host sync), NaN when the update was skipped for a non-finite loss or gradient.
    params: () -> the parameters (called twice; a generator is used up once). stats: filled with
    the step's device-side numbers ("grad_norm", see optim.clipped_step), never read here."""
    total = torch.zeros((), device=device)
    for x, y in micro_batches:
        with _autocast(device, dtype):
            loss = forward(x, y)
        # subtle: divide so the accumulated gradient is the mean over all micro-batches, equal to
        # the gradient of one batch len(micro_batches) times larger.
        (loss / len(micro_batches)).backward()
        total = total + loss.detach()
    if dist is not None:
        dist.average_gradients_(params(), total)
    ok = clipped_step(opt, params(), grad_clip, total, stats)
    if after_step is not None:
        after_step()
    return torch.where(ok, total / len(micro_batches), math.nan)


def train_step(model, opt, micro_batches, cfg: TrainConfig, device, dtype, dist: Dist | None = None,
               forward: Forward | None = None, stats: dict | None = None) -> torch.Tensor:
    """One eager optimizer step over `micro_batches` [(x, y), ...] (host or device tensors); see
    step_body. forward: the training forward (default: the plain model(x, y)'s loss)."""
    fwd = forward if forward is not None else (lambda x, y: model(x, y)[1])
    batches = [(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in micro_batches]
    loss = step_body(fwd, model.parameters, opt, batches, cfg.grad_clip, device, dtype, dist, stats=stats)
    opt.zero_grad(set_to_none=True)
    return loss
