"""The model: GPTConfig, the GPT modules, positions, the KV cache, and the model file.

This is the plain reference path: one forward (`GPT.trunk` + `GPT.head`) for training,
evaluation and decoding, written to be read. It imports tokenizers/ (a model file embeds its
tokenizer) and util/, never kernels/, generate/, data/ or train/: fast paths plug into it from
kernels/ as arguments, and the model does not know they exist.
"""

from .config import ACTIVATIONS, POSITIONS, GPTConfig
from .gpt import GPT, lm_loss
from .kv_cache import KVCache

__all__ = ["ACTIVATIONS", "POSITIONS", "GPT", "GPTConfig", "KVCache", "lm_loss"]
