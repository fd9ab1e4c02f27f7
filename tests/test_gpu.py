"""GPU-only paths (skipped without CUDA; run on the GPU machine): the CUDA-graph training step and
the compiled step (and the graph recording the compiled step) must train like the plain eager step."""

import pytest
import torch

from tinylm.model.gpt import GPT, GPTConfig
from tinylm.train.trainer import TrainConfig, make_optimizer, param_groups, train_step
from tinylm.kernels.select import training_kernels
from tinylm.train.step import plain_head_loss, training_forward

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _losses(mode: str, steps: int = 8) -> list[float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_size=32, n_layer=2, n_head=2, n_embd=64)).cuda()
    cfg = TrainConfig(max_steps=steps, lr=3e-3, grad_accum=2)
    data = torch.randint(0, 50, (steps, 2, 8, 33), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    # the training forward as the Trainer builds it: the kernels select.py chooses for this model
    kernels = training_kernels(model, torch.device("cuda"))
    fwd = training_forward(model, kernels.block, kernels.head_loss or plain_head_loss)
    if mode in ("graph+compiled", "compiled"):
        fwd = torch.compile(fwd, dynamic=False)
    if mode in ("graph", "graph+compiled"):
        from tinylm.train.graph_step import GraphedStep

        step = GraphedStep(model, param_groups(model, cfg), cfg, None, (8, 32), forward=fwd)
    else:
        opt = make_optimizer(model, cfg, torch.device("cuda"))

        def step(mb, lr):
            return train_step(model, opt, mb, cfg, torch.device("cuda"), None, forward=fwd)
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
