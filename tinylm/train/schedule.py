"""Learning-rate schedules as pure functions of training progress.

`cosine_lr`: linear warmup, then cosine decay to a floor (Loshchilov & Hutter 2017).
`plateau_update`: the seed-000 schedule, which halves the rate whenever the average loss stops
improving. `constant`: warmup, then the peak rate. `scheduled_lr` picks among them by name.
None touches an optimizer; train/trainer.py writes the returned rate into it. A new schedule is
added here alone (its name in SCHEDULES, its rule in scheduled_lr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SCHEDULES = ("cosine", "plateau", "constant")


def cosine_lr(step: int, progress: float, max_lr: float, min_lr: float, warmup_steps: int,
              warmup_progress: float = 0.0) -> float:
    """Rate for optimizer step `step` (0-based) when `progress` (0..1) of the run is done.
    Warmup: max_lr * (step + 1) / warmup_steps. After: min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * p)),
    where p runs from 0 at the end of warmup (`warmup_progress`) to 1 at the end of the run.
    Example: max 1e-3, min 1e-4, p = 0.5 -> 5.5e-4."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    p = (progress - warmup_progress) / max(1.0 - warmup_progress, 1e-9)
    p = min(max(p, 0.0), 1.0)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class PlateauState:
    lr: float
    best: float = math.inf  # best average loss seen so far
    bad_epochs: int = 0  # epochs in a row without enough improvement


def plateau_update(state: PlateauState, loss: float, patience: int = 0, factor: float = 0.5,
                   threshold: float = 1e-3, min_lr: float = 0.0) -> PlateauState:
    """Feed one epoch's average loss. An epoch improves when loss < best * (1 - threshold); after
    more than `patience` epochs in a row without improvement, the rate is multiplied by `factor`
    (not below min_lr) and the count restarts.
    Example: best 2.0, loss 2.0, patience 0 -> lr halves."""
    if loss < state.best * (1.0 - threshold):
        return replace(state, best=loss, bad_epochs=0)
    bad = state.bad_epochs + 1
    if bad > patience:
        return replace(state, lr=max(state.lr * factor, min_lr), bad_epochs=0)
    return replace(state, bad_epochs=bad)


def scheduled_lr(schedule: str, step: int, progress: float, max_lr: float, min_lr: float, warmup_steps: int,
                 warmup_progress: float, plateau: PlateauState) -> float:
    """The rate of optimizer step `step` under `schedule` (one of SCHEDULES). plateau: the
    plateau schedule's state (for constant it keeps max_lr, as nothing updates it)."""
    if schedule == "cosine":
        return cosine_lr(step, progress, max_lr, min_lr, warmup_steps, warmup_progress)
    if step < warmup_steps:
        return plateau.lr * (step + 1) / warmup_steps
    return plateau.lr
