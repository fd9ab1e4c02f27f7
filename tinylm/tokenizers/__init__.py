"""Tokenizers: text <-> token ids. See base.py for the interface every tokenizer implements."""

from __future__ import annotations

from ..util.errors import UsageError
from .base import BOS, DEFAULT_SPECIALS, EOS, PAD, UNK, Tokenizer
from .char import CharTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "from_dict", "PAD", "UNK", "BOS", "EOS", "DEFAULT_SPECIALS"]


def from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()` output (as stored in a model file)."""
    if not isinstance(d, dict):
        raise UsageError(f"the tokenizer must be a JSON object, got a JSON {type(d).__name__}; the file may be damaged")
    kind = d.get("type")
    if kind == "char":
        return CharTokenizer.from_dict(d)
    if kind in ("bpe", "gpt2"):
        from .bpe import BPETokenizer  # noqa: PLC0415 - keeps the char path free of regex/tiktoken

        return BPETokenizer.from_dict(d)
    raise UsageError(f"unknown tokenizer type {str(kind)[:40]!r} in the model/tokenizer file; it may be damaged or from a newer tinylm")
