"""The interface every tinylm tokenizer implements.

A tokenizer turns text into token ids and back, knows its special tokens, and serialises itself
to a JSON-able dict so it can live inside a model file. It knows nothing about models or
training. Concrete tokenizers: `char.CharTokenizer` (the default), `bpe.BPETokenizer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

# Special tokens shared by every tinylm tokenizer (seed 001): fixed ids 0..3.
PAD, UNK, BOS, EOS = "<PAD>", "<UNK>", "<BOS>", "<EOS>"
DEFAULT_SPECIALS = (PAD, UNK, BOS, EOS)
# The most ids a tokenizer may have (~50x GPT-4's): a stored tokenizer claiming more is damaged
# or crafted, and would make the model's embedding (and BPE's decode table) too big to allocate.
MAX_VOCAB = 10_000_000


class Tokenizer(ABC):
    """Text <-> ids. Subclasses set `kind` and implement the abstract methods."""

    kind: str = "base"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the model must be able to embed (max id + 1)."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id, e.g. {"<EOS>": 3}. May be empty."""

    @abstractmethod
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids. With allow_special=True, special-token strings in the text become their
        ids; otherwise they are encoded as plain text."""

    @abstractmethod
    def decode_bytes(self, ids: list[int]) -> bytes:
        """ids -> UTF-8 bytes. Used by streaming output, which must cut only at whole characters."""

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-able description that `tinylm.tokenizers.from_dict` turns back into an equal
        tokenizer. Must contain "type": the tokenizer's `kind`."""

    def decode(self, ids: list[int]) -> str:
        """ids -> text; bytes that do not form valid UTF-8 become U+FFFD."""
        return self.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def special_id(self, token: str) -> int | None:
        return self.special_tokens.get(token)

    @property
    def eos_id(self) -> int | None:
        return self.special_id(EOS)

    @property
    def bos_id(self) -> int | None:
        return self.special_id(BOS)

    @property
    def pad_id(self) -> int | None:
        return self.special_id(PAD)
