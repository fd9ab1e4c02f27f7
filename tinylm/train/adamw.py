"""AdamW (Loshchilov & Hutter 2019) on PyTorch's fused multi-tensor kernel, without torch.optim.

Why not torch.optim.AdamW(fused=True)? It calls this same kernel, but every torch.optim optimizer
imports torch._dynamo the first time it is built or stepped (its methods are wrapped to keep
torch.compile out), and that import costs 1-3 s: a tenth of a 20-second training run. This class
does the same arithmetic with the same state, in the same state_dict layout, so checkpoints move
between the two and tests compare them exactly.

Supports what tinylm's trainer uses: parameter groups with their own weight decay, a learning
rate that is a float or a 0-dim device tensor (the CUDA-graph step fills one in place), and the
two device-side hooks torch.amp.GradScaler uses: `grad_scale` (gradients are divided by it inside
the kernel; tinylm clips this way) and `found_inf` (1.0 skips the update). No amsgrad, no maximize.
The kernel exists for CUDA and, from PyTorch 2.4, for the CPU.
"""

from __future__ import annotations

from collections import defaultdict

import torch

HYPER = ("lr", "betas", "eps", "weight_decay")


class AdamW:
    fused_kernel = True  # optim.clipped_step hands this optimizer grad_scale and found_inf

    def __init__(self, param_groups, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        groups = list(param_groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        for g in groups:
            g = {**defaults, **g, "params": list(g["params"])}
            # what torch.optim.AdamW(fused=True) records, so that either can load the other's state_dict
            g.update(amsgrad=False, maximize=False, foreach=None, capturable=isinstance(g["lr"], torch.Tensor),
                     differentiable=False, fused=True, decoupled_weight_decay=True)
            self.param_groups.append(g)
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self.grad_scale: torch.Tensor | None = None
        self.found_inf: torch.Tensor | None = None

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.get(p)
        if st is None:
            st = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                  "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return st

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            # the kernel takes lists of one device and dtype: group the parameters that have gradients
            lists: dict[tuple, tuple[list, list, list, list, list]] = defaultdict(lambda: ([], [], [], [], []))
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self._state(p)
                for lst, t in zip(lists[(p.device, p.dtype)], (p, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"])):
                    lst.append(t)
            beta1, beta2 = g["betas"]
            for (device, _), (params, grads, avgs, sqs, steps) in lists.items():
                lr = g["lr"]
                if isinstance(lr, torch.Tensor) and lr.device != device:
                    lr = lr.to(device)
                scale = None if self.grad_scale is None else self.grad_scale.to(device)
                found = None if self.found_inf is None else self.found_inf.to(device)
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(params, grads, avgs, sqs, [], steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                                    weight_decay=g["weight_decay"], eps=g["eps"], maximize=False,
                                    grad_scale=scale, found_inf=found)
                if found is not None:  # a skipped step does not count (the kernel left everything else alone)
                    torch._foreach_sub_(steps, [found] * len(steps))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    # ---- state_dict in torch.optim's layout: parameters numbered in group order

    def state_dict(self) -> dict:
        groups, index = [], {}
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index.setdefault(p, len(index))
                ids.append(index[p])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        return {"state": {index[p]: dict(st) for p, st in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        saved = sd["param_groups"]
        if len(saved) != len(self.param_groups) or any(len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("the optimizer state does not match these parameter groups")
        by_id = {i: p for s, g in zip(saved, self.param_groups) for i, p in zip(s["params"], g["params"])}
        for s, g in zip(saved, self.param_groups):
            for k in HYPER:
                if k in s:
                    g[k] = tuple(s[k]) if k == "betas" else s[k]
        self.state = {}
        for i, st in sd["state"].items():
            p = by_id[int(i)]
            self.state[p] = {"step": torch.as_tensor(st["step"], dtype=torch.float32).to(p.device).clone(),
                             "exp_avg": st["exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                             "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone()}


_AVAILABLE: dict[str, bool] = {}


def available(device: torch.device | str) -> bool:
    """Whether this PyTorch has the fused AdamW kernel for `device` (tried once on one number)."""
    kind = torch.device(device).type
    if kind not in _AVAILABLE:
        try:
            p = torch.zeros(1, device=device)
            z = [torch.zeros(1, device=device) for _ in range(3)]
            step = torch.zeros((), device=device)
            torch._fused_adamw_([p], [z[0]], [z[1]], [z[2]], [], [step], amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.99,
                                weight_decay=0.0, eps=1e-8, maximize=False)
            _AVAILABLE[kind] = True
        except (AttributeError, RuntimeError, NotImplementedError):
            _AVAILABLE[kind] = False
    return _AVAILABLE[kind]
