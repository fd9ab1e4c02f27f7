"""Character-level tokenizer (the default, as in seeds 000 and 004).

Every distinct character of the training text is one token; ids 0..3 are the special tokens
`<PAD> <UNK> <BOS> <EOS>` and the characters follow in sorted order, so the same text always
gives the same vocabulary.

Unknown characters (a prompt character the training text never had) follow a documented
policy, chosen per call: `unknown="error"` (the default) raises a UsageError that lists them,
`unknown="replace"` maps each to `<UNK>`.
"""

from __future__ import annotations

import re

from ..util.errors import UsageError
from .base import DEFAULT_SPECIALS, MAX_VOCAB, UNK, Tokenizer


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str], specials: tuple[str, ...] = DEFAULT_SPECIALS):
        self.specials = list(specials)
        self.chars = list(chars)
        self.itos = self.specials + self.chars  # id -> token string
        self.stoi = {s: i for i, s in enumerate(self.itos)}  # token string -> id
        if len(self.stoi) != len(self.itos):
            raise ValueError("duplicate characters or special tokens in the vocabulary")
        self._special_re = re.compile("|".join(re.escape(s) for s in self.specials)) if self.specials else None

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the sorted set of characters in `text`."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.specials)}

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, sorted, each once."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text: str, allow_special: bool = False, unknown: str = "error") -> list[int]:
        if allow_special and self._special_re is not None:
            ids: list[int] = []
            pos = 0
            for m in self._special_re.finditer(text):
                ids += self._encode_plain(text[pos:m.start()], unknown)
                ids.append(self.stoi[m.group()])
                pos = m.end()
            return ids + self._encode_plain(text[pos:], unknown)
        return self._encode_plain(text, unknown)

    def _encode_plain(self, text: str, unknown: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        missing = self.unknown_chars(text)
        if unknown == "replace" and UNK in stoi:
            unk = stoi[UNK]
            return [stoi.get(c, unk) for c in text]
        if unknown == "replace":  # a vocabulary built without specials has nothing to map them to
            raise UsageError(f"the text has {len(missing)} character(s) the model's vocabulary lacks and the vocabulary "
                             "has no <UNK> token to map them to; remove them from the text")
        shown = " ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise UsageError(
            f"the text has {len(missing)} character(s) the model's vocabulary lacks: {shown}; "
            "remove them, or pass --unknown replace to map them to <UNK>"
        )

    def decode_bytes(self, ids: list[int]) -> bytes:
        n_special = len(self.specials)
        out = []
        for i in ids:
            if i >= n_special:
                out.append(self.itos[i])
            elif self.itos[i] == UNK:
                out.append("\ufffd")
            # PAD/BOS/EOS have no text form
        return "".join(out).encode("utf-8")

    def to_dict(self) -> dict:
        return {"type": self.kind, "specials": self.specials, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        """From `to_dict` output; a malformed dict is a UsageError naming the field."""
        chars, specials = d.get("chars"), d.get("specials", list(DEFAULT_SPECIALS))
        for name, v in (("chars", chars), ("specials", specials)):
            if not (isinstance(v, list) and all(isinstance(c, str) and c for c in v)):
                raise UsageError(f"char tokenizer field {name!r} must be a list of non-empty strings")
        if len(chars) + len(specials) > MAX_VOCAB:
            raise UsageError(f"char tokenizer has {len(chars) + len(specials)} tokens, more than {MAX_VOCAB}")
        try:
            return cls(chars, tuple(specials))
        except ValueError as e:
            raise UsageError(f"char tokenizer is damaged ({e})") from None
