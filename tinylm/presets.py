"""Named size presets: model shape (and a few training defaults) in one place.

tiny/small/medium follow seed 001's table; classic is seed 000's TinyLM model and trainer;
cpu is a small char model tuned for a 2-core machine. A preset only fills in values the user did
not give as flags.
"""

from __future__ import annotations

# name -> {GPTConfig field or TrainConfig field: value}
PRESETS: dict[str, dict] = {
    "tiny": dict(n_embd=384, n_layer=6, n_head=6, context_size=256, d_ff=512),
    "small": dict(n_embd=512, n_layer=8, n_head=8, context_size=256, d_ff=1024),
    "medium": dict(n_embd=768, n_layer=12, n_head=12, context_size=256, d_ff=1536),
    "classic": dict(n_embd=192, n_layer=4, n_head=4, context_size=512, d_ff=768, dropout=0.1,
                    batch_size=32, lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.01,
                    schedule="plateau", epochs=10000, warmup_steps=0, min_lr=0.0),
    "cpu": dict(n_embd=128, n_layer=4, n_head=4, context_size=64, d_ff=512, dropout=0.0,
                batch_size=32, lr=2e-3, min_lr=2e-4, warmup_steps=50, weight_decay=0.1, eval_interval=250),
}
