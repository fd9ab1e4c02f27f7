"""Fast paths made by torch.compile, or written for it.

- `compiled_blocks`: each transformer block compiled for training ("regional" compilation: the
  blocks share one compiled graph, so compile time does not grow with depth). Plain twin: the
  block's own forward (tests/test_kernels_select.py holds the losses and gradients equal).
- `store_by_index`, `attend_written_out`: the static KV cache's store and attention in the
  forms inductor handles best, for `--decode compile`. Plain twins: model/kv_cache.py's
  store_by_slot and attend_filled (tests/test_generate_cache.py decodes with both).
"""

from __future__ import annotations

import torch


def compiled_blocks(model, **compile_options):
    """A model.gpt.BlockKernel that runs torch.compile'd copies of the model's blocks (training
    only: the trainer passes it to its training forward; evaluation and decoding stay eager and
    trigger no recompiles). compile_options go to torch.compile (tests pick a quick backend)."""
    compiled = [torch.compile(b, dynamic=False, **compile_options) for b in model.blocks]

    def run(block, x, rope, cache, layer):
        # subtle: no layer index passed in; an int argument would be a compile-time constant and
        # recompile the block once per layer (past the recompile limit: silently eager)
        return compiled[layer](x, rope)

    return run


def store_by_index(cache, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
    """store_by_slot for a compiled step: k, v (B, nh, T, hs) stored by indexing the whole buffer,
    (layer, slot) -> (B, nh, hs). An index_copy_ into the view k[layer] made inductor copy the
    whole (L, B, nh, S, hs) buffer back after it, three buffer copies per step (GPT-2 124M, batch
    16: 3.8 ms a step instead of ~0.8). Eagerly index_copy_ is the cheaper op (2.2 vs 4.7 us on
    the CPU), which is why this is not the plain path. The layer goes in as a 1-element index
    tensor: an int would make k[layer] a view again."""
    at = torch.full((1,), layer, dtype=torch.long, device=cache.k.device)  # (1,)
    cache.k[at, :, :, cache.slots] = k.to(cache.k.dtype).permute(2, 0, 1, 3)  # (T, B, nh, hs) into (L, B, nh, S, hs)
    cache.v[at, :, :, cache.slots] = v.to(cache.v.dtype).permute(2, 0, 1, 3)


def attend_written_out(cache, layer: int, q: torch.Tensor) -> torch.Tensor:
    """attend_filled over all S slots, written out for inductor to fuse into its own C++ loops on
    the CPU rather than calling SDPA: the char model's int8 step went 0.59 -> 0.54 ms
    (bench/RESULTS.md, CPU --decode compile). q (B, nh, T, hs) -> (B, nh, T, hs)."""
    kb, vb = cache.k[layer], cache.v[layer]  # (B, nh, S, hs) each
    att = (q @ kb.transpose(-1, -2)) * q.size(-1) ** -0.5 + cache.mask  # (B, nh, T, S)
    return torch.softmax(att, dim=-1) @ vb  # (B, nh, T, hs)
