"""kernels/select.py chooses the fast paths; each must equal the plain function it replaces.
Here: the rules of the choice on the CPU, the compiled blocks against Block.forward, the plain head
loss against GPT.forward's, and the CPU weight layout against the untouched model. (The CUDA
kernels have their own files: test_fused_ce.py, test_decode_kernel.py, test_decode_linear.py.)"""

from __future__ import annotations

import torch

from conftest import make_model
from tinylm.generate.engine import Decoder
from tinylm.kernels import select
from tinylm.kernels.compiled import attend_written_out, compiled_blocks, store_by_index
from tinylm.kernels.cpu_weights import cpu_weight_layout
from tinylm.model.gpt import run_block
from tinylm.model.kv_cache import attend_filled, store_by_slot
from tinylm.train.step import plain_head_loss, training_forward

CPU = torch.device("cpu")


def test_the_cpu_gets_the_plain_path_unless_compilation_is_asked_for():
    model = make_model()
    chosen = select.training_kernels(model, CPU)
    assert chosen.block is run_block and chosen.head_loss is None
    cache = model.new_cache(2)
    dec = select.decode_kernels(model, cache, 2)
    assert dec.block is run_block and dec.head is None
    assert cache.store is store_by_slot and cache.attend_slots is attend_filled and cache.one_token is None
    compiled_cache = model.new_cache(2)
    select.decode_kernels(model, compiled_cache, 2, compiled=True)
    assert compiled_cache.store is store_by_index and compiled_cache.attend_slots is attend_written_out


def test_plain_head_loss_is_the_models_own_loss():
    model = make_model(seed=2)
    x = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, 1)
    _, want = model(x, y)
    got = training_forward(model)(x, y)
    assert torch.equal(got, want)
    h = model.trunk(x)
    assert torch.equal(plain_head_loss(model, h, y), want)


def test_compiled_blocks_give_the_plain_loss_and_gradients():
    torch.manual_seed(0)
    model = make_model(seed=3)
    x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    y = x.roll(-1, 1)
    results = []
    for block in (run_block, compiled_blocks(model, backend="aot_eager")):  # dynamo + autograd, no C++ build
        model.zero_grad(set_to_none=True)
        loss = training_forward(model, block_kernel=block)(x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (fast, fast_grads) = results
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)
    for g, want in zip(fast_grads, plain_grads):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-6)


def test_cpu_weight_layout_keeps_every_logit():
    model = make_model(seed=4).eval()
    x = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, _ = model(x)
        cpu_weight_layout(model)
        assert not model.blocks[0].attn.qkv.weight.is_contiguous()  # (in, out) in memory now
        got, _ = model(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_a_decoder_runs_the_models_forward_with_the_chosen_kernels():
    # one-token steps take the decode kernels; on the CPU those are the plain block and head,
    # so a step's logits equal the full forward's at that position
    model = make_model(seed=5).eval()
    seq = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(seq)
        dec = Decoder(model, 2, model.cfg.padded_vocab)
        dec.prefill(seq[:, :6])
        step = dec.forward_one(seq[:, 6:])
    torch.testing.assert_close(step, full[:, 6], rtol=1e-5, atol=1e-5)
