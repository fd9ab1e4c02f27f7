"""GPTConfig: the shape and the variants of a GPT, validated where it is built.

Owns the architecture's settings and their checks (each message names the CLI flag). Knows
nothing about modules or training; model/gpt.py builds the network from it, and model files
store `to_dict()`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..util.errors import UsageError

POSITIONS = ("learned", "sinusoidal", "rope")
ACTIVATIONS = ("gelu", "relu", "silu", "swiglu", "relu2")
# field -> (the `tinylm train` argparse dest, the flag a user types): the CLI reads its model flags
# through this table, and messages about a checkpoint name them by it. dest None: no model flag.
FLAGS = {"n_layer": ("layers", "--layers"), "n_head": ("heads", "--heads"), "n_embd": ("embd", "--embd"),
         "context_size": ("context", "--context"), "d_ff": ("ff", "--ff"), "dropout": ("dropout", "--dropout"),
         "positions": ("positions", "--positions"), "activation": ("activation", "--activation"),
         "bias": ("bias", "--no-bias"), "tie_weights": ("tie", "--untied"), "qk_norm": ("qk_norm", "--qk-norm"),
         "logit_softcap": ("softcap", "--softcap"), "vocab_size": (None, "--vocab-size")}


@dataclass
class GPTConfig:
    vocab_size: int = 65  # the tokenizer's vocabulary; the embedding is padded past it (below)
    context_size: int = 256  # longest sequence the model attends over (GPT-2: 1024)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    d_ff: int = 0  # MLP hidden width; 0 = 4 * n_embd as in GPT-2
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 has them
    positions: str = "learned"  # learned | sinusoidal | rope
    activation: str = "gelu"  # gelu | relu | silu | swiglu | relu2 (ReLU squared, So et al. 2021)
    tie_weights: bool = True  # output head shares the token embedding matrix (Press & Wolf 2017)
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    logit_softcap: float = 0.0  # 0 = off; else logits = cap * tanh(logits / cap) (Gemma 2)
    rope_base: float = 10000.0
    # Padding the embedding to a multiple of 64 lets the output matmul use full tensor-core tiles;
    # the extra ids are never targets, so the model learns to give them ~zero probability.
    vocab_multiple: int = 64

    def __post_init__(self):
        checks = [
            (self.vocab_size >= 1, f"--vocab-size must be at least 1, got {self.vocab_size}"),
            (self.context_size >= 1, f"--context must be at least 1, got {self.context_size}"),
            (self.n_layer >= 1, f"--layers must be at least 1, got {self.n_layer}"),
            (self.n_head >= 1, f"--heads must be at least 1, got {self.n_head}"),
            (self.n_embd >= 1, f"--embd must be at least 1, got {self.n_embd}"),
            (self.d_ff >= 0, f"--ff must be 0 (= 4 x embd) or positive, got {self.d_ff}"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.positions in POSITIONS, f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"),
            (self.activation in ACTIVATIONS, f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"),
            (self.logit_softcap >= 0, f"--softcap must be 0 (off) or positive, got {self.logit_softcap}"),
            (self.vocab_multiple >= 1, "vocab_multiple must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if self.n_embd % self.n_head:
            raise UsageError(f"--heads ({self.n_head}) must divide --embd ({self.n_embd}); "
                             f"try --heads {math.gcd(self.n_embd, self.n_head)} or a width that is a multiple of {self.n_head}")
        if self.positions == "rope" and self.head_size % 2:
            raise UsageError(f"RoPE needs an even head size, got {self.head_size}; change --embd or --heads")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ff_size(self) -> int:
        return self.d_ff or 4 * self.n_embd

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})
