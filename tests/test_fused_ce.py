"""The fused head loss (fused_ce.py) against F.cross_entropy: per-row losses and the logits'
gradient against fp64 arithmetic, the autograd function's loss and gradients against the unfused
head + F.cross_entropy, and on CUDA the model's training loss and gradients with and without the
fused path (eager, autocast, compiled). On the CPU the kernel runs in triton's interpreter
(TRITON_INTERPRET=1 in the environment, else those cases skip).

    PYTHONPATH=/path/to/triton TRITON_INTERPRET=1 python -m pytest -q tests/test_fused_ce.py
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model
from tinylm.kernels import head_loss as fused_ce, select
from tinylm.train.step import plain_head_loss, training_forward

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
kernel = pytest.mark.skipif(not fused_ce.AVAILABLE, reason="needs triton and torch.library.triton_op")
DEVICES = [pytest.param("cpu", marks=[kernel, pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                                 reason="the CPU runs triton kernels only with TRITON_INTERPRET=1")]),
           pytest.param("cuda", marks=[kernel, cuda])]


def logits_and_targets(N, V, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * 4).to(device, dtype)  # wide spread: exp over/underflows if done naively
    logits[0, 3] = 60.0  # one dominant logit: the running max must move
    targets = torch.randint(0, V, (N,), generator=g)
    targets[1] = -1  # ignored
    targets[2] = V - 1  # the last column, in the last partial block
    return logits, targets.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("V", [65, fused_ce.BLOCK * 2 + 37])  # one partial block; two full and a partial
def test_rows_loss_and_gradient_match_fp64(device, V):
    logits, targets = logits_and_targets(5, V, device)
    loss, grad = fused_ce.ce_loss_grad(logits, targets)
    ref_logits = logits.double().cpu().requires_grad_()
    ref = F.cross_entropy(ref_logits, targets.cpu(), ignore_index=-1, reduction="none")  # (N,), 0 where ignored
    ref.sum().backward()
    assert loss.dtype == torch.float32 and grad.shape == logits.shape and grad.dtype == logits.dtype
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.cpu().double(), ref_logits.grad, rtol=1e-5, atol=1e-6)
    assert grad[1].abs().max().item() == 0.0  # the ignored row has no gradient


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_logits_give_fp32_statistics(device):
    logits, targets = logits_and_targets(4, 300, device, torch.bfloat16, seed=1)
    loss, grad = fused_ce.ce_loss_grad(logits, targets)
    ref_logits = logits.float().cpu().requires_grad_()  # the same bf16 values, upcast, as model.py's loss does
    ref = F.cross_entropy(ref_logits, targets.cpu(), ignore_index=-1, reduction="none")
    ref.sum().backward()
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.cpu().float(), ref_logits.grad, rtol=8e-3, atol=1e-5)  # one bf16 rounding


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_equals_head_then_cross_entropy(device):
    g = torch.Generator().manual_seed(2)
    N, C, V = 6, 16, 130
    x = torch.randn(N, C, generator=g).to(device).requires_grad_()
    w = (torch.randn(V, C, generator=g) / 4).to(device).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g).to(device)
    targets[4] = -1
    loss = fused_ce.linear_cross_entropy(x, w, targets)
    (loss * 0.25).backward()  # an upstream gradient other than 1: accumulation divides the loss
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(x2 @ w2.T, targets, ignore_index=-1)
    (ref * 0.25).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_all_rows_ignored_gives_nan_like_cross_entropy(device):
    x = torch.randn(3, 8, device=device, requires_grad=True)
    w = torch.randn(20, 8, device=device)
    targets = torch.full((3,), -1, device=device)
    assert torch.isnan(F.cross_entropy(x @ w.T, targets, ignore_index=-1))
    assert torch.isnan(fused_ce.linear_cross_entropy(x, w, targets))


def test_the_cpu_and_evaluation_keep_the_unfused_loss_and_its_logits():
    model = make_model()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 8))
    logits, loss = model(idx, idx)  # CPU training: unfused
    assert logits is not None and loss is not None
    assert select.training_kernels(model, torch.device("cpu")).head_loss is None  # the CPU never takes the fused path


@pytest.fixture
def small_heads_fused(monkeypatch):
    """The test models' 40-token heads take the fused loss (by default only >= 8192 outputs do)."""
    monkeypatch.setattr(select, "FUSED_CE_MIN_VOCAB", 0)


def _model_loss_and_grads(model, idx, targets, fused, autocast=False, compiled=False):
    """(head calls, loss, grads) of the training forward with the fused or the plain head loss."""
    model.zero_grad(set_to_none=True)
    fwd = training_forward(model, head_loss=fused_ce.fused_head_loss if fused else plain_head_loss)
    fwd = torch.compile(fwd, dynamic=False) if compiled else fwd
    calls = []  # the plain head (lm_head's forward) makes the logits; the fused path never does
    hook = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = fwd(idx, targets)
    finally:
        hook.remove()
    loss.backward()
    return len(calls), loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@cuda
@pytest.mark.skipif(not fused_ce.AVAILABLE, reason="needs triton")
@pytest.mark.parametrize("tie", [True, False])
def test_model_training_loss_and_grads_fused_equal_unfused_fp32(tie, small_heads_fused):
    torch.manual_seed(0)
    model = make_model(tie_weights=tie).cuda()
    idx = torch.randint(0, model.cfg.vocab_size, (3, 12), device="cuda")
    targets = idx.roll(-1, 1)
    targets[:, -1] = -1
    head_calls, loss, grads = _model_loss_and_grads(model, idx, targets, fused=True)
    assert head_calls == 0  # the fused path keeps no logits
    ref_calls, ref_loss, ref_grads = _model_loss_and_grads(model, idx, targets, fused=False)
    assert ref_calls == 1
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@cuda
@pytest.mark.skipif(not fused_ce.AVAILABLE, reason="needs triton")
@pytest.mark.parametrize("compiled", [False, True])
def test_model_training_bf16_fused_within_rounding_of_unfused(compiled, small_heads_fused):
    torch.manual_seed(1)
    model = make_model().cuda()
    idx = torch.randint(0, model.cfg.vocab_size, (4, 16), device="cuda")
    _, loss, grads = _model_loss_and_grads(model, idx, idx.roll(-1, 1), fused=True, autocast=True, compiled=compiled)
    _, ref_loss, ref_grads = _model_loss_and_grads(model, idx, idx.roll(-1, 1), fused=False, autocast=True, compiled=compiled)
    torch.testing.assert_close(loss, ref_loss, rtol=2e-3, atol=2e-3)
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item() + 1e-12
        assert (g - ref_grads[name]).abs().max().item() / scale < 3e-2, name


@cuda
def test_a_small_head_keeps_the_unfused_loss_on_cuda():
    model = make_model().cuda()  # 40 outputs < FUSED_CE_MIN_VOCAB
    idx = torch.randint(0, model.cfg.vocab_size, (2, 8), device="cuda")
    assert select.training_kernels(model, torch.device("cuda")).head_loss is None
    logits, loss = model(idx, idx)
    assert logits is not None and loss.requires_grad


@cuda
@pytest.mark.skipif(not fused_ce.AVAILABLE, reason="needs triton")
@pytest.mark.parametrize("mode", ["eager", "graph", "graph+compiled"])
def test_training_steps_with_the_fused_loss_match_the_unfused_eager_ones(mode, small_heads_fused):
    # test_gpu.py's 8 steps (2 micro-batches each: an upstream gradient of 1/2) through tinylm's
    # step, its CUDA graph, and the graph of the compiled step, the loss fused, against the eager
    # step with F.cross_entropy
    from test_gpu import _losses

    fused = _losses(mode)
    select.FUSED_CE_MIN_VOCAB = 1 << 30  # (the fixture restores it) unfused, for the reference
    assert fused == pytest.approx(_losses("eager"), rel=2e-3, abs=2e-3)
