"""The fused linear kernel and the fused decoding block (decode_linear.py) against model.py's
modules. Needs triton: on the CPU the kernel runs in triton's interpreter (TRITON_INTERPRET=1 in
the environment, else those cases skip), on CUDA natively; on CUDA also the engine with and
without the fused blocks.

    PYTHONPATH=/path/to/triton TRITON_INTERPRET=1 python -m pytest -q tests/test_decode_linear.py
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from conftest import make_model  # noqa: E402
from tinylm.kernels import decode_linear  # noqa: E402
from tinylm.generate.engine import Decoder, Engine, SamplingConfig  # noqa: E402
from tinylm.kernels.select import DECODE_FAST  # noqa: E402


pytestmark = pytest.mark.skipif(not decode_linear.AVAILABLE, reason="torch too old for torch.library.triton_op")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                         reason="the CPU runs triton kernels only with TRITON_INTERPRET=1")),
           pytest.param("cuda", marks=cuda)]
ACT_REFERENCE = {"none": lambda h: h, "gelu": lambda h: F.gelu(h, approximate="tanh"), "relu": F.relu,
                 "silu": F.silu, "relu2": lambda h: F.relu(h).square()}


def reference(x, w, b, ln, act, res):
    """The unfused modules' arithmetic in fp64."""
    h = x.double()
    if ln is not None:
        lw, lb, eps = ln
        h = F.layer_norm(h, (h.shape[1],), lw.double(), None if lb is None else lb.double(), eps)
    h = F.linear(h, w.double(), None if b is None else b.double())
    h = ACT_REFERENCE[act](h)
    return h if res is None else h + res.double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 3, 17])
@pytest.mark.parametrize("act", list(decode_linear.ACTIVATIONS))
@pytest.mark.parametrize("K", [200, 1100])  # tiles of 32 and of 4 outputs at batch 1
def test_fused_linear_matches_the_modules_in_fp32(device, M, act, K):
    g = torch.Generator().manual_seed(M)
    N = 70  # neither K nor N a multiple of a block: masks on every edge
    x = (torch.randn(M, K, generator=g) * 3 + 1).to(device)  # an offset mean: LayerNorm must remove it
    w = torch.randn(N, K, generator=g).to(device) / K ** 0.5
    b = torch.randn(N, generator=g).to(device)
    ln = (torch.randn(K, generator=g).to(device), torch.randn(K, generator=g).to(device), 1e-5)
    res = torch.randn(M, N, generator=g).to(device)
    for kw in (dict(bias=b, ln=ln, act=act, res=res), dict(bias=None, ln=(ln[0], None, 1e-5), act=act),
               dict(bias=b, act=act, res=res)):
        got = decode_linear.fused_linear(x, w, **kw)
        want = reference(x, w, kw["bias"], kw.get("ln"), act, kw.get("res"))
        assert got.shape == (M, N) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_linear_takes_strided_inputs_and_a_transposed_weight(device):
    g = torch.Generator().manual_seed(1)
    big = torch.randn(4, 3 * 48, generator=g).to(device)
    x = big[:, 48:96]  # (4, 48), row stride 144: a slice of a wider activation
    w = torch.randn(48, 40, generator=g).to(device).t()  # (40, 48) with strides (1, 40), as cpu_weight_layout leaves it
    torch.testing.assert_close(decode_linear.fused_linear(x, w).double(), reference(x, w, None, None, "none", None),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_a_head_wide_enough_for_looped_tiles(device):
    # N >= 16384 takes tiles of 32 x 256 in a loop over K (GPT-2's head), not whole rows
    assert decode_linear.tiles(16400, 300)[1] > 0
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 300, generator=g).to(device), torch.randn(16400, 300, generator=g).to(device)
    ln = (torch.randn(300, generator=g).to(device), None, 1e-5)
    torch.testing.assert_close(decode_linear.fused_linear(x, w, ln=ln).double(), reference(x, w, None, ln, "none", None),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 2])  # one row: the fused kernel; two rows of a wide head: the modules
def test_decode_head_equals_the_modules(device, B):
    torch.manual_seed(3)
    ln_f, head = torch.nn.LayerNorm(24).to(device), torch.nn.Linear(24, decode_linear.WIDE_HEAD, bias=False).to(device)
    torch.nn.init.normal_(ln_f.weight), torch.nn.init.normal_(ln_f.bias)
    x = torch.randn(B, 24, device=device)
    with torch.no_grad():
        torch.testing.assert_close(decode_linear.decode_head(ln_f, head, x), head(ln_f(x)), rtol=1e-5, atol=1e-5)


def test_fused_linear_refuses_mismatched_shapes():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="agree on K"):
        decode_linear.fused_linear(x, torch.zeros(4, 7))
    with pytest.raises(ValueError, match="res must be"):
        decode_linear.fused_linear(x, torch.zeros(4, 8), res=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="act must be"):
        decode_linear.fused_linear(x, torch.zeros(4, 8), act="tanh")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides", [dict(), dict(bias=False, activation="swiglu"),
                                       dict(positions="rope", qk_norm=True, activation="relu2")])
def test_decode_block_equals_the_block_module(device, overrides):
    # Every block of a prefilled cache, one more token: the fused block against Block.forward on
    # a copy of the same cache; outputs and the cache contents must agree.
    model = make_model(seed=3, **overrides).to(device)
    B, T0 = 3, 5
    prompt = torch.randint(0, 40, (B, T0), generator=torch.Generator().manual_seed(4)).to(device)
    with torch.no_grad():
        cache = model.new_cache(B)
        pos0 = torch.arange(T0, device=device)
        cache.set_positions(pos0)
        model.trunk(prompt, cache, pos=pos0)  # prefill, the plain path
        ref_cache = model.new_cache(B)
        ref_cache.k.copy_(cache.k), ref_cache.v.copy_(cache.v)
        pos = torch.tensor([T0], device=device)
        rope = (model.rope_cos[pos], model.rope_sin[pos]) if model.cfg.positions == "rope" else None
        x = torch.randn(B, model.cfg.n_embd, generator=torch.Generator().manual_seed(5)).to(device)
        cache.set_positions(pos), ref_cache.set_positions(pos)
        for i, block in enumerate(model.blocks):
            got = decode_linear.decode_block(block, x, rope, cache, i)  # (B, C)
            want = block(x[:, None], rope, ref_cache, i)[:, 0]  # (B, C)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            x = want
    torch.testing.assert_close(cache.k, ref_cache.k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v, ref_cache.v, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- CUDA: the engine, fused vs unfused

@cuda
@pytest.mark.parametrize("decode", ["eager", "graph", "compile"])
@pytest.mark.parametrize("overrides", [dict(), dict(positions="rope", activation="swiglu", bias=False)])
def test_engine_logits_and_greedy_tokens_agree_fused_and_unfused(monkeypatch, decode, overrides):
    model = make_model(seed=13, **overrides).cuda()  # fp32: the kernels run in ieee precision
    prompt = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(9)).cuda()
    cfg = SamplingConfig(max_new_tokens=40, temperature=0)
    got, caches = {}, {}
    for fused in (True, False):
        eng = Engine(model, 3, 40, cfg, decode=decode, fast=DECODE_FAST if fused else ("attention",))
        assert eng.mode == decode
        got[fused] = eng(prompt)
        caches[fused] = eng.decoder.cache
    assert torch.equal(got[True], got[False])
    torch.testing.assert_close(caches[True].k, caches[False].k, rtol=1e-5, atol=1e-5)


@cuda
def test_bf16_step_logits_are_within_a_rounding_of_the_unfused_step(monkeypatch):
    # nanoGPT's char shape in bf16, as generation runs it: one step's logits, fused vs unfused.
    torch.manual_seed(0)
    from tinylm.model.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, context_size=256, vocab_size=65)).cuda().bfloat16().eval()
    prompt = torch.randint(0, 65, (2, 10), device="cuda")
    out = {}
    with torch.no_grad():
        for fused in (True, False):
            dec = Decoder(model, 2, 65, fast=DECODE_FAST if fused else ("attention",))
            dec.prefill(prompt)
            out[fused] = dec.forward_one(prompt[:, -1:]).float()  # (2, 65)
    err = (out[True] - out[False]).abs().max() / out[False].abs().max()
    assert err < 0.03, f"fused logits differ from unfused by {err:.3%} of their range"
    assert torch.equal(out[True].argmax(-1), out[False].argmax(-1))
