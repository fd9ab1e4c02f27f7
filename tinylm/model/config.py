"""GPTConfig: the shape and the variants of a GPT, validated where it is built.

Owns the architecture's settings and their checks (each message names the CLI flag). Knows
nothing about modules or training; model/gpt.py builds the network from it, and model files
store `to_dict()`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..tokenizers.base import MAX_VOCAB
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

# The largest values a config may hold, from flags or from a model file alike: a crafted file must
# not make tinylm allocate what no machine has (a context of 10**9 would ask for ~128 GB of tables).
MAX_CONTEXT = 1 << 20
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 16  # n_embd, and d_ff up to MAX_WIDTH * 16
MAX_PARAMS = 1 << 36  # ~69 G parameters (275 GB in fp32)
MAX_TABLE = 1 << 28  # elements of a position table (context x width), 1 GiB in fp32


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
            (1 <= self.vocab_multiple <= 4096, "vocab_multiple must be in [1, 4096]"),
            (self.vocab_size <= MAX_VOCAB, f"--vocab-size must be at most {MAX_VOCAB}, got {self.vocab_size}"),
            (self.context_size <= MAX_CONTEXT, f"--context must be at most {MAX_CONTEXT}, got {self.context_size}"),
            (self.n_layer <= MAX_LAYERS, f"--layers must be at most {MAX_LAYERS}, got {self.n_layer}"),
            (self.n_embd <= MAX_WIDTH, f"--embd must be at most {MAX_WIDTH}, got {self.n_embd}"),
            (self.d_ff <= 16 * MAX_WIDTH, f"--ff must be at most {16 * MAX_WIDTH}, got {self.d_ff}"),
            (math.isfinite(self.logit_softcap), f"--softcap must be finite, got {self.logit_softcap}"),
            (math.isfinite(self.rope_base) and self.rope_base > 1, f"rope_base must be a finite number > 1, got {self.rope_base}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if self.n_embd % self.n_head:
            raise UsageError(f"--heads ({self.n_head}) must divide --embd ({self.n_embd}); "
                             f"try --heads {math.gcd(self.n_embd, self.n_head)} or a width that is a multiple of {self.n_head}")
        if self.positions == "rope" and self.head_size % 2:
            raise UsageError(f"RoPE needs an even head size, got {self.head_size}; change --embd or --heads")
        if self.positions != "learned" and self.context_size * self.n_embd > MAX_TABLE:
            raise UsageError(f"--context x --embd must be at most {MAX_TABLE} (the {self.positions} position table), "
                             f"got {self.context_size} x {self.n_embd}; use a smaller --context or --embd")
        if self.num_params() > MAX_PARAMS:
            raise UsageError(f"this model would have {self.num_params():,} parameters, more than the {MAX_PARAMS:,} "
                             "tinylm allows; use fewer --layers or a smaller --embd/--ff")

    def num_params(self) -> int:
        """Parameters of the GPT this config builds, counted from the shapes (nothing allocated);
        an upper bound within a few per cent (biases and norms counted as if present)."""
        C, F, L = self.n_embd, self.ff_size, self.n_layer
        mlp_in = 2 if self.activation == "swiglu" else 1
        block = 4 * C * C + (mlp_in + 1) * C * F + 9 * C + mlp_in * F
        heads = 1 if self.tie_weights else 2
        return L * block + heads * self.padded_vocab * C + (self.context_size * C if self.positions == "learned" else 0) + 2 * C

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
        """The config stored as `to_dict()` in a model file or checkpoint. Every field is checked
        for its exact JSON type first (a bool is not an int, 1.0 is not an int), so a damaged or
        crafted dict is a UsageError naming the field, never a TypeError deeper down. Missing
        fields take their defaults (files of older tinylm versions); unknown ones are ignored
        (a newer tinylm's additions; the weights' shapes are still checked against this config)."""
        if not isinstance(d, dict):
            raise UsageError(f"model_config must be a JSON object, got a JSON {_json_type(d)}")
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k, v in d.items():
            want = _FIELD_TYPES[k]
            ok = type(v) is want or (want is float and type(v) is int)  # JSON writes 1.0 as 1 in some tools
            if not ok:
                raise UsageError(f"model_config.{k} must be {_TYPE_WORDS[want]}, got {_json_repr(v)}")
        try:
            return cls(**d)
        except UsageError as e:
            raise UsageError(f"model_config: {e}") from None


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_FIELD_TYPES = {"vocab_size": int, "context_size": int, "n_layer": int, "n_head": int, "n_embd": int, "d_ff": int,
                "dropout": float, "bias": bool, "positions": str, "activation": str, "tie_weights": bool, "qk_norm": bool,
                "logit_softcap": float, "rope_base": float, "vocab_multiple": int}  # field -> its one JSON type


def _json_type(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), "number")


def _json_repr(v) -> str:
    """A short rendering of a JSON value for a message: 1.0, true, "abc", an array, an object."""
    if isinstance(v, (list, dict)):
        return f"a JSON {_json_type(v)}"
    text = "null" if v is None else "true" if v is True else "false" if v is False else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
