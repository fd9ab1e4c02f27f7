"""clipped_step: clipping folded into fused AdamW (grad_scale) must equal clip_grad_norm_ + step,
and a non-finite loss or gradient must leave every parameter and optimizer state untouched."""

import copy

import pytest
import torch

from tinylm.model.gpt import GPT, GPTConfig
from tinylm.train.optim import clipped_step


def _model_with_grads(scale: float = 1.0) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, context_size=8, n_layer=1, n_head=2, n_embd=8))
    x = torch.randint(0, 11, (2, 8))
    _, loss = model(x, x)
    (loss * scale).backward()
    return model


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("clip,scale", [(1.0, 1.0), (0.05, 1.0), (0.0, 1.0), (1.0, 50.0)])
def test_clipped_step_equals_clip_grad_norm_then_step(fused, clip, scale):
    ref, ours = _model_with_grads(scale), _model_with_grads(scale)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
    ref_opt.step()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    ok = clipped_step(opt, ours.parameters(), clip, torch.tensor(1.0))
    assert bool(ok)
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    if clip > 0 and scale > 1:  # the clip really acted: an unclipped step would land elsewhere
        plain = _model_with_grads(scale)
        torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1).step()
        assert any(not torch.allclose(p, q) for p, q in zip(plain.parameters(), ours.parameters()))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_clipped_step_skips_non_finite(fused, bad):
    model = _model_with_grads()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    clipped_step(opt, model.parameters(), 1.0, torch.tensor(1.0))  # one good step creates the state
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(opt.state_dict())
    loss = torch.tensor(float("nan") if bad == "loss" else 1.0)
    if bad == "grad":
        next(model.parameters()).grad[0, 0] = float("inf")
    ok = clipped_step(opt, model.parameters(), 1.0, loss)
    assert not bool(ok)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for pid, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            assert torch.equal(v, state_before["state"][pid][key]), (pid, key)


# ---------------------------------------------------------------- tinylm.train.adamw.AdamW vs torch.optim.AdamW

from tinylm.train.adamw import AdamW  # noqa: E402


def _groups(model):
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


@pytest.mark.parametrize("lr_tensor", [False, True])
def test_adamw_equals_torch_fused_adamw_exactly(lr_tensor):
    ours_model, ref_model = _model_with_grads(), _model_with_grads()
    lr = torch.tensor(3e-3) if lr_tensor else 3e-3
    ours = AdamW(_groups(ours_model), lr=lr, betas=(0.9, 0.95))
    ref = torch.optim.AdamW(_groups(ref_model), lr=lr.clone() if lr_tensor else lr, betas=(0.9, 0.95), fused=True)
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(3))
    for step in range(4):
        for m, opt in ((ours_model, ours), (ref_model, ref)):
            if step:  # fresh gradients from the moved weights
                opt.zero_grad()
                m(x, x)[1].backward()
            opt.grad_scale = torch.tensor(2.0) if step == 1 else None  # as clipping hands it over
            opt.found_inf = torch.tensor(1.0 if step == 2 else 0.0)  # step 2 is skipped
            opt.step()
    for (name, a), b in zip(ref_model.named_parameters(), ours_model.parameters()):
        assert torch.equal(a, b), name
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert ref_state["state"].keys() == our_state["state"].keys()
    for i, st in ref_state["state"].items():
        for k, v in st.items():
            assert torch.equal(our_state["state"][i][k], v), (i, k)
    assert float(our_state["state"][0]["step"]) == 3.0  # the skipped step is not counted


def test_adamw_state_dict_loads_both_ways():
    a_model, b_model = _model_with_grads(), _model_with_grads()
    ours = AdamW(_groups(a_model), lr=1e-2)
    ours.step()
    ref = torch.optim.AdamW(_groups(b_model), lr=1e-2, fused=True)
    ref.load_state_dict(ours.state_dict())  # tinylm -> torch
    back = AdamW(_groups(a_model), lr=5.0)
    back.load_state_dict(ref.state_dict())  # torch -> tinylm, hyperparameters included
    assert back.param_groups[0]["lr"] == 1e-2
    for p in a_model.parameters():
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(back.state[p][k], ours.state[p][k]), k
