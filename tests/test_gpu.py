"""GPU-only paths (skipped without CUDA; run on the GPU machine): the CUDA-graph training step and
the compiled step (and the graph recording the compiled step) must train like the plain eager step."""

import pytest
import torch

from tinylm.model import GPT, GPTConfig
from tinylm.train import TrainConfig, make_optimizer, param_groups, train_step

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _losses(mode: str, steps: int = 8) -> list[float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_size=32, n_layer=2, n_head=2, n_embd=64)).cuda()
    cfg = TrainConfig(max_steps=steps, lr=3e-3, grad_accum=2)
    data = torch.randint(0, 50, (steps, 2, 8, 33), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    if mode in ("graph", "graph+compiled"):
        from tinylm.graph_step import GraphedStep

        fwd = torch.compile(model, dynamic=False) if mode == "graph+compiled" else None
        step = GraphedStep(model, param_groups(model, cfg), cfg, None, (8, 32), forward=fwd)
    else:
        opt = make_optimizer(model, cfg, torch.device("cuda"))
        fwd = torch.compile(model, dynamic=False) if mode == "compiled" else model

        def step(mb, lr):
            return train_step(fwd, opt, mb, cfg, torch.device("cuda"), None)
    out = []
    for i in range(steps):
        mb = [(data[i, j, :, :-1], data[i, j, :, 1:]) for j in range(2)]
        out.append(float(step(mb, 3e-3)))
    return out


@cuda
def test_cuda_graph_step_matches_eager():
    eager, graphed = _losses("eager"), _losses("graph")
    assert graphed == pytest.approx(eager, rel=1e-4, abs=1e-4)  # fp32: same kernels, same order


@cuda
def test_compiled_step_matches_eager():
    eager, compiled = _losses("eager"), _losses("compiled")
    assert compiled == pytest.approx(eager, rel=2e-3, abs=2e-3)  # fused kernels round differently


@cuda
def test_cuda_graph_of_the_compiled_step_matches_eager():
    eager, both = _losses("eager"), _losses("graph+compiled")
    assert both == pytest.approx(eager, rel=2e-3, abs=2e-3)
