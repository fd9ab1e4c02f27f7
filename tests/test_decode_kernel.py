"""The fused decoding kernel (decode_kernels.py) against the unfused reference: index_copy_ into a
copy of the cache, then SDPA with the static-mode mask. Needs triton: on the CPU the kernel runs
in triton's interpreter (TRITON_INTERPRET=1 in the environment, else those cases skip), on CUDA
natively. On CUDA also: decoding with the fused path gives the unfused path's greedy tokens.

    PYTHONPATH=/path/to/triton TRITON_INTERPRET=1 python -m pytest -q tests/test_decode_kernel.py
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from conftest import make_model  # noqa: E402
from tinylm.kernels import decode_attention as decode_kernels  # noqa: E402
from tinylm.kernels.select import DECODE_FAST  # noqa: E402
from tinylm.generate.engine import Engine, SamplingConfig  # noqa: E402

pytestmark = pytest.mark.skipif(not decode_kernels.AVAILABLE, reason="torch too old for torch.library.triton_op")

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                         reason="the CPU runs triton kernels only with TRITON_INTERPRET=1")),
           pytest.param("cuda", marks=cuda)]
L, NH = 3, 2  # layers in the cache buffer (the kernel gets layer 1's view), heads


def step_inputs(B: int, S: int, hs: int, dtype, device, seed: int = 0):
    """q, k, v (B, NH, 1, hs) as the model makes them (non-contiguous views of one qkv output),
    and random k/v cache buffers (L, B, NH, S, hs)."""
    g = torch.Generator().manual_seed(seed)
    C = NH * hs
    qkv = torch.randn(B, 1, 3 * C, generator=g).to(device, dtype)  # (B, 1, 3C)
    q, k, v = (t.view(B, 1, NH, hs).transpose(1, 2) for t in qkv.split(C, dim=2))  # 3 x (B, nh, 1, hs)
    kbuf, vbuf = (torch.randn(L, B, NH, S, hs, generator=g).to(device, dtype) for _ in range(2))
    return q, k, v, kbuf, vbuf


def reference(q, k, v, kc, vc, pos, rolling):
    """The unfused path on copies of the caches: (y in fp32, k cache, v cache)."""
    kc, vc = kc.clone(), vc.clone()
    S = kc.shape[2]
    slots = pos % S if rolling else pos
    kc.index_copy_(2, slots, k.to(kc.dtype))
    vc.index_copy_(2, slots, v.to(vc.dtype))
    mask = torch.arange(S, device=q.device)[None, :] <= pos[:, None]  # (1, S)
    y = F.scaled_dot_product_attention(q.float(), kc.float(), vc.float(), attn_mask=mask)  # (B, nh, 1, hs)
    return y, kc, vc


def positions_to_try(S: int, rolling: bool) -> list[int]:
    if rolling:  # still filling, the first wrap, and far past it
        return [0, 1, S - 1, S, S + 3, 3 * S + 1]
    return [0, 1, S // 2, S - 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rolling", [False, True], ids=["prefix", "rolling"])
@pytest.mark.parametrize("B,S,hs", [(1, 16, 8), (3, 16, 8), (1, 300, 12), (3, 256, 64)])
def test_fused_step_matches_index_copy_then_sdpa(device, dtype, rolling, B, S, hs):
    # S=300 and hs=12: several slot blocks, the last partial, and a head size padded to 16.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for i, p in enumerate(positions_to_try(S, rolling)):
        q, k, v, kbuf, vbuf = step_inputs(B, S, hs, dtype, device, seed=i)
        pos = torch.tensor([p], device=device)
        want, want_k, want_v = reference(q, k, v, kbuf[1], vbuf[1], pos, rolling)
        others = kbuf[[0, 2]].clone(), vbuf[[0, 2]].clone()
        y = decode_kernels.decode_attention(q, k, v, kbuf, vbuf, 1, pos, rolling)
        assert y.shape == (B, NH, 1, hs) and y.dtype == dtype and y.is_contiguous()
        torch.testing.assert_close(y.float(), want, **tol, msg=lambda m: f"pos {p}: {m}")
        assert torch.equal(kbuf[1], want_k) and torch.equal(vbuf[1], want_v), f"pos {p}: cache contents differ"
        assert torch.equal(kbuf[[0, 2]], others[0]) and torch.equal(vbuf[[0, 2]], others[1]), "other layers touched"


@pytest.mark.parametrize("device", DEVICES)
def test_a_position_past_a_non_rolling_cache_writes_nothing(device):
    q, k, v, kbuf, vbuf = step_inputs(1, 16, 8, torch.float32, device)
    before = kbuf.clone(), vbuf.clone()
    decode_kernels.decode_attention(q, k, v, kbuf, vbuf, 1, torch.tensor([16], device=device), False)
    assert torch.equal(kbuf, before[0]) and torch.equal(vbuf, before[1])


def test_shapes_other_than_one_token_per_row_are_refused():
    q = torch.zeros(1, NH, 2, 8)
    q1 = q[:, :, :1]
    cache = torch.zeros(L, 1, NH, 16, 8)
    with pytest.raises(ValueError, match="one token per row"):
        decode_kernels.decode_attention(q, q, q, cache, cache, 0, torch.tensor([3]), False)
    with pytest.raises(ValueError, match="caches must be"):
        decode_kernels.decode_attention(q1, q1, q1, cache[0], cache[0], 0, torch.tensor([3]), False)
    with pytest.raises(ValueError, match="layer 3"):
        decode_kernels.decode_attention(q1, q1, q1, cache, cache, L, torch.tensor([3]), False)


# ---------------------------------------------------------------- CUDA: the engine, fused vs unfused

@cuda
def test_every_layer_of_a_compiled_step_is_written_and_attended():
    # One compiled graph calls the op once per layer on the same buffers, as a decoding step does
    # (inductor once lost all but one layer's writes when the op took views k[layer]).
    q, k, v, kbuf, vbuf = step_inputs(2, 64, 16, torch.float32, "cuda")
    pos = torch.tensor([70], device="cuda")
    want = [reference(q * (i + 1), k + i, v - i, kbuf[i], vbuf[i], pos, True) for i in range(L)]

    @torch.compile(fullgraph=True, dynamic=False)
    def step(q, k, v, kbuf, vbuf, pos):
        return [decode_kernels.decode_attention(q * (i + 1), k + i, v - i, kbuf, vbuf, i, pos, True) for i in range(L)]

    for i, y in enumerate(step(q, k, v, kbuf, vbuf, pos)):
        torch.testing.assert_close(y, want[i][0], rtol=1e-5, atol=1e-5)
        assert torch.equal(kbuf[i], want[i][1]) and torch.equal(vbuf[i], want[i][2]), f"layer {i}: cache contents differ"


@cuda
@pytest.mark.parametrize("decode", ["graph", "compile"])
@pytest.mark.parametrize("positions,window", [("learned", "slide"), ("rope", "slide"), ("rope", "roll")])
def test_engine_gives_the_same_greedy_tokens_fused_and_unfused(monkeypatch, decode, positions, window):
    model = make_model(seed=13, positions=positions).cuda()  # context 16: 60 tokens cross it often
    prompt = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(9)).cuda()
    cfg = SamplingConfig(max_new_tokens=60, temperature=0)
    got, caches = {}, {}
    for fused in (True, False):
        eng = Engine(model, 3, 40, cfg, window=window, decode=decode, fast=DECODE_FAST if fused else ("linear",))
        assert eng.mode == decode
        assert (eng.decoder.cache.slots is None) == fused  # the recorded step took the path under test
        got[fused] = eng(prompt)
        caches[fused] = eng.decoder.cache
    assert got[True].shape == (3, 64)
    assert torch.equal(got[True], got[False])
    # Greedy tokens of a tiny random model can survive a broken cache; its contents cannot.
    torch.testing.assert_close(caches[True].k, caches[False].k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches[True].v, caches[False].v, rtol=1e-5, atol=1e-5)
