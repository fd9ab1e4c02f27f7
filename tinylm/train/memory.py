"""A lower bound on the host memory a CPU training run needs, checked before the run starts.

On the CPU an allocation larger than the machine is not always refused: Linux may grant it and
kill the process later, with no message. So the settings are checked up front against what this
machine has. The bound counts only what must exist (it leaves out attention's T x T scores, which
a fused kernel may never store), so a run it refuses could never have fit.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..util.errors import UsageError

BYTES_FP32 = 4
STATE_COPIES = 4  # weights, gradients and AdamW's two moments, each a full fp32 copy


def training_bytes_lower_bound(n_params: int, n_layer: int, n_embd: int, ff_size: int, vocab: int, batch: int,
                               context: int) -> int:
    """Bytes a training step must hold at its peak: the parameter state, and the activations the
    backward pass reads (per token and layer: the two norms, q/k/v, the attention output and its
    projection, the residual, the MLP's input and activation; then the logits and their gradient)."""
    per_token = n_layer * (9 * n_embd + 2 * ff_size) + 2 * vocab  # floats
    return BYTES_FP32 * (STATE_COPIES * n_params + batch * context * per_token)


def machine_memory_bytes() -> int | None:
    """Physical memory, or the cgroup limit where that is smaller (a container); None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_cpu_training_fits(model_cfg, n_params: int, batch: int) -> None:
    """Refuse, naming the flags, a CPU run whose lower bound exceeds this machine's memory."""
    have = machine_memory_bytes()
    if have is None:
        return
    c = model_cfg
    need = training_bytes_lower_bound(n_params, c.n_layer, c.n_embd, c.ff_size, c.vocab_size, batch, c.context_size)
    if need > have:
        raise UsageError(f"training this model with --batch-size {batch} and --context {c.context_size} needs at least "
                         f"{need / 2**30:.1f} GiB of memory on the CPU (weights, optimizer state and activations), more "
                         f"than this machine's {have / 2**30:.1f} GiB; use a smaller --batch-size (with --grad-accum for "
                         "the same tokens per step), --context or model")
