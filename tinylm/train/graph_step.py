"""The training step captured as one CUDA graph (forward, backward, clipping, AdamW), replayed.

Why: at small shapes a step is a few milliseconds of GPU work spread over hundreds of kernels,
and Python cannot launch them as fast as the GPU runs them, so the GPU idles. A CUDA graph
launches the whole step at once. Unlike torch.compile it needs no compiler import and no compile
time, which matters when the goal is the shortest time from launch to a good model.

The recorded sequence is train/step.py's `step_body`, the same code the eager step runs. With a
torch.compile'd training forward (`forward`), the compiled kernels are what the graph records:
fewer, fused kernels and no launch gaps, which is the fastest step for large models.

Limits: CUDA only; every step has the same shapes (true for tinylm's batches); AdamW only (its
fused, capturable form, with the learning rate held in a device tensor the host updates).
This module knows nothing about schedules, data or saving.
"""

from __future__ import annotations

import torch

from .adamw import AdamW
from .step import step_body

WARMUP_STEPS = 3  # uncaptured steps first: autograd, cuBLAS and cuDNN allocate workspaces, torch.compile compiles


class GraphedStep:
    """Call with ([(x, y), ...] micro-batches, lr) -> mean loss (a device tensor; NaN when the
    step was skipped for a non-finite loss or gradient). The first
    WARMUP_STEPS calls run eagerly on a side stream, the next one captures, later ones replay."""

    def __init__(self, model, param_groups: list[dict], cfg, dtype: torch.dtype | None, batch_shape: tuple[int, int],
                 forward=None, after_step=None, dist=None):
        dev = next(model.parameters()).device
        self.model, self.cfg, self.dtype = model, cfg, dtype
        # (x, y) -> loss, e.g. step.training_forward(model), compiled or not; default: the plain model's loss
        self.forward = forward if forward is not None else (lambda x, y: model(x, y)[1])
        self.after_step = after_step  # device work after each update, recorded too (the weight average)
        self.dist = dist  # data parallelism: the gradients' all-reduce is recorded in the graph too (NCCL)
        self.lr = torch.tensor(cfg.lr, device=dev, dtype=torch.float32)
        self.opt = AdamW(param_groups, lr=self.lr, betas=(cfg.beta1, cfg.beta2))  # the lr tensor makes it capturable
        k = cfg.grad_accum
        self.x = torch.zeros((k, *batch_shape), dtype=torch.long, device=dev)  # (k, B, T) static inputs
        self.y = torch.zeros((k, *batch_shape), dtype=torch.long, device=dev)  # (k, B, T) static targets
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None  # the graph's output, rewritten by every replay
        self.calls = 0
        self.stats: dict = {}  # the step's device-side numbers (the gradient norm), rewritten by every replay

    def _body(self) -> torch.Tensor:
        micro_batches = [(self.x[j], self.y[j]) for j in range(self.x.size(0))]
        # a non-finite loss or gradient skips the update inside the graph (fused AdamW's found_inf)
        return step_body(self.forward, self.model.parameters, self.opt, micro_batches, self.cfg.grad_clip,
                         self.x.device, self.dtype, self.dist, self.after_step, stats=self.stats)

    def __call__(self, micro_batches, lr: float) -> torch.Tensor:
        for j, (x, y) in enumerate(micro_batches):
            self.x[j].copy_(x, non_blocking=True)
            self.y[j].copy_(y, non_blocking=True)
        self.lr.fill_(lr)
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.loss.clone()
        if self.calls <= WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                loss = self._body()
            torch.cuda.current_stream().wait_stream(side)
            return loss
        # subtle: gradients must not exist when capture starts, so the captured backward allocates
        # them in the graph's memory pool and every replay writes fresh gradients there (the
        # first micro-batch's backward assigns, later ones accumulate); never zero them afterwards.
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._body()
        self.graph.replay()
        return self.loss.clone()
