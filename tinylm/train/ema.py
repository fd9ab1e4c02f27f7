"""An exponential moving average of the model's weights (Polyak averaging), for `--ema DECAY`.

Late in training the weights jitter around a minimum with every step; their running average sits
closer to it, so it usually evaluates a little better than the latest weights. The trainer
updates the average after every optimizer step (inside the CUDA graph when there is one: the
update is plain device arithmetic with its counter on the device), evaluates and saves the
averaged weights, and keeps training the raw ones.

Knows nothing about optimizers, schedules or files; trainer state stores `state_dict()`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class EMA:
    """shadow = d * shadow + (1 - d) * weights after each step, d = min(decay, (1 + n) / (10 + n))
    for the n-th update: the short warm-up keeps the random initial weights from lingering in the
    average (the schedule TensorFlow's ExponentialMovingAverage uses with num_updates)."""

    def __init__(self, params, decay: float):
        self.params = [p for p in params]
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]  # same dtype and device as the weights
        self.updates = torch.zeros((), dtype=torch.float32, device=self.shadow[0].device if self.shadow else "cpu")

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)  # a device scalar: no host sync
        # subtle: mul + add with tensor scalars rather than _foreach_lerp_ with a tensor weight,
        # which older PyTorch releases lack
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, torch._foreach_mul([p.detach() for p in self.params], 1 - d))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model's parameters hold the averaged weights (copied in place, so
        a recorded CUDA graph and the optimizer keep their tensors); the raw ones come back after."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates.detach().cpu(), "shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.updates.copy_(state["updates"])
            for s, v in zip(self.shadow, state["shadow"], strict=True):
                s.copy_(v)
