"""Optimizers for training: AdamW with decay on matrices only, optionally Muon for the blocks'
matrices, and a step that is skipped when the gradients are not finite.

The skip happens on the device where the optimizer allows it (fused AdamW), so a training step
never waits for the host. This module knows nothing about schedules, data or checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import adamw as fused_adamw
from ..model.gpt import GPT

if TYPE_CHECKING:
    from .config import TrainConfig


class Optimizers:
    """Several optimizers stepped as one (Muon covers some parameters, AdamW the rest)."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, st in zip(self.optimizers, states):
            o.load_state_dict(st)


def param_groups(model: GPT, cfg: TrainConfig, exclude: set[int] = frozenset()) -> list[dict]:
    """AdamW groups: weight decay on matrices (embeddings, linear weights) only; decaying biases
    and LayerNorm gains only pulls them toward zero for no benefit."""
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> Optimizers:
    """AdamW over `param_groups`. With cfg.optimizer == "muon", the blocks' weight matrices go to
    Muon instead (Jordan et al. 2024: orthogonalised momentum), its learning rate matched to
    AdamW's update size so one --lr serves both."""
    hidden = [p for b in model.blocks for p in b.parameters() if p.dim() == 2] if cfg.optimizer == "muon" else []
    groups = param_groups(model, cfg, {id(p) for p in hidden})
    if fused_adamw.available(device):  # torch's fused kernel, without importing torch._dynamo (train/adamw.py)
        opts: list = [fused_adamw.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))]
    else:
        opts = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))]
    if hidden:
        opts.append(torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"))
    return Optimizers(opts)


def _fused_adam(o) -> bool:
    return getattr(o, "fused_kernel", False) or (isinstance(o, torch.optim.Adam) and all(g.get("fused") for g in o.param_groups))


def clipped_step(opt, params, grad_clip: float, loss_sum: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
    """Clip the gradients' global norm to `grad_clip` (0 = no clipping), then opt.step(), skipped
    when the loss or any gradient is not finite; returns that verdict as a device bool `ok`.

    One norm answers both questions: a NaN/inf anywhere makes it non-finite. Fused AdamW takes
    both on the device, with no host sync and no extra pass over the gradients: `found_inf` (the
    hook torch.amp.GradScaler uses) skips the update, and `grad_scale` divides each gradient by
    1/coef inside the update kernel, which is exactly clipping by coef. Other optimizers (Muon,
    unfused AdamW on the CPU, where a sync costs nothing) get clipped gradients and ask the host.
    stats: when given, stats["grad_norm"] is set to the norm before clipping (a device tensor,
    read by the trainer at log intervals only)."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]).float()  # fp32 even for bf16 gradients
    ok = torch.isfinite(norm) & torch.isfinite(loss_sum)
    if stats is not None:
        stats["grad_norm"] = norm
    # clip_grad_norm_'s coefficient: scale by clip / norm when the norm exceeds the clip, else 1
    coef = (grad_clip / (norm + 1e-6)).clamp(max=1.0) if grad_clip > 0 else None
    optimizers = getattr(opt, "optimizers", [opt])
    if coef is not None and not all(_fused_adam(o) for o in optimizers):
        torch._foreach_mul_([p.grad for p in params], coef)
    for o in optimizers:
        if _fused_adam(o):
            o.found_inf = (~ok).float()
            o.grad_scale = None if coef is None else coef.reciprocal()
            o.step()
        elif bool(ok):  # subtle: a host sync on CUDA, paid by Muon only
            o.step()
    return ok
