"""Byte-level BPE tokenizer: trained by tinylm, or loaded from a rank file (cl100k, GPT-2).

Over `char.CharTokenizer` this adds: text is handled as UTF-8 bytes, so any text round-trips
and nothing is unknown; frequent byte sequences become single tokens (merges); a regex
pre-splits text into chunks first (see patterns.py). This module owns the tokenizer object:
encoding, decoding, the JSON form and its file. Training lives in bpe_train.py, rank-file and
GPT-2 loading in ranks.py.

Ids. A trained tokenizer puts its special tokens first (<PAD>=0 <UNK>=1 <BOS>=2 <EOS>=3 plus
any extras), then the 256 single bytes, then one id per merge. A loaded rank file keeps
id == rank, and its special tokens come after the last rank. Either way the table
`ranks` (token bytes -> id) is all encoding needs: lower id = merged earlier.

Encoding (the algorithm GPT-2 and tiktoken use): split the text with the pattern; for each
chunk, start from its bytes and keep merging the adjacent pair whose concatenation has the
lowest id, until no adjacent pair is a token. `encode_reference` does this in plain Python (with
a per-chunk cache); `encode` hands the same table to tiktoken's Rust core when tiktoken is
installed, and both give the same ids on any input (tests/test_bpe_tiktoken.py checks this).
One caveat: the two regex engines carry their own Unicode tables (tiktoken 0.14's Rust regex:
Unicode 16; `regex` 2026: Unicode 17), so a character assigned only by the newer version may be
a letter to one and not the other, and the chunks, hence ids, can differ. Round trips are exact
either way.

Special tokens in user text are plain text by default: encode("<EOS>") gives the ids of the
bytes "<", "EOS", ">". With allow_special=True the string "<EOS>" becomes id 3. Decoding
follows CharTokenizer: <PAD>, <BOS> and the end-of-text token give no text, <UNK> gives U+FFFD,
any other special gives its own text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import regex

from ..util.errors import UsageError
from ..util.files import atomic_write_bytes
from .base import BOS, DEFAULT_SPECIALS, EOS, MAX_VOCAB, PAD, UNK, Tokenizer
from .bpe_train import ProgressBar, count_words, learn_merges
from .patterns import resolve_pattern
from .ranks import (CL100K_SPECIALS, ENDOFTEXT, b64, escape_bytes, gpt2_ranks, load_tiktoken_file, ranks_to_tokens,
                    unb64, unescape_bytes)

__all__ = ["BPETokenizer", "train_bpe", "train_bpe_from_counts", "load_gpt2", "CL100K_SPECIALS", "DEFAULT_SPECIALS"]

FORMAT_VERSION = 1
_CACHE_LIMIT = 100_000  # chunks remembered by the reference encoder before its cache is reset


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, tokens: list[bytes], pattern: str = "gpt2", specials: Mapping[str, int] | None = None,
                 first_id: int = 0, merges: list[tuple[bytes, bytes]] | None = None, eos: str | None = None,
                 kind: str = "bpe"):
        """tokens[i] has id first_id + i. `merges` (optional) records how a trained vocabulary was
        built: tokens[256 + i] == merges[i][0] + merges[i][1]; it makes the saved file readable."""
        self.kind = kind
        self.pattern_name, self.pattern = resolve_pattern(pattern)
        self.tokens = list(tokens)
        self.first_id = first_id
        self.merges = merges
        self.specials = dict(specials or {})  # special token string -> id
        self.ranks = {t: first_id + i for i, t in enumerate(self.tokens)}  # token bytes -> id
        if len(self.ranks) != len(self.tokens):
            raise ValueError("duplicate token bytes in the vocabulary")
        clash = [s for s, i in self.specials.items() if first_id <= i < first_id + len(self.tokens) or i < 0]
        if clash or len(set(self.specials.values())) != len(self.specials):
            raise ValueError(f"special token ids collide with token ids or each other: {self.specials}")
        self._vocab_size = max([first_id + len(self.tokens), *(i + 1 for i in self.specials.values())])
        self.eos = eos if eos is not None else (EOS if EOS in self.specials else None)
        self._pat = regex.compile(self.pattern)
        by_len = sorted(self.specials, key=len, reverse=True)  # longest first: "<|a|>b" before "<|a|>"
        self._special_re = regex.compile("|".join(regex.escape(s) for s in by_len)) if by_len else None
        self._table = self._decode_table()
        self._cache: dict[bytes, list[int]] = {}  # chunk bytes -> ids, for encode_reference
        self._fast = None  # tiktoken.Encoding once built, False if unavailable

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def from_tiktoken_file(cls, path: str | os.PathLike, pattern: str = "cl100k",
                           specials: Mapping[str, int] | Iterable[str] = ()) -> "BPETokenizer":
        """Load a `.tiktoken` rank file (plain or gzip); ids == ranks. `specials` is either
        {name: id} (e.g. CL100K_SPECIALS) or names to append after the last rank (e.g. DEFAULT_SPECIALS)."""
        tokens = ranks_to_tokens(load_tiktoken_file(path), str(path))
        placed = _place_specials(specials, len(tokens))
        return cls(tokens, pattern, placed, first_id=0, eos=ENDOFTEXT if ENDOFTEXT in placed else None)

    @classmethod
    def gpt2(cls, rank_file: str | os.PathLike | None = None, allow_download: bool = True) -> "BPETokenizer":
        """GPT-2's own tokenizer: 50257 ids, <|endoftext|>=50256 as the end-of-text token.
        See `ranks.gpt2_ranks` for where the table comes from; the result is self-contained."""
        ranks, source = gpt2_ranks(rank_file, allow_download)
        tokens = ranks_to_tokens(ranks, source)
        return cls(tokens, "gpt2", {ENDOFTEXT: len(tokens)}, first_id=0, eos=ENDOFTEXT, kind="gpt2")

    # ---- the Tokenizer interface --------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.specials)

    @property
    def eos_id(self) -> int | None:
        return self.specials.get(self.eos) if self.eos else None

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Text -> ids through tiktoken's core when available, else `encode_reference`."""
        fast = self._fast if self._fast is not None else self._build_fast()
        if not fast:
            return self.encode_reference(text, allow_special)
        if allow_special and self.specials:
            return fast.encode(text, allowed_special="all", disallowed_special=())
        return fast.encode_ordinary(text)

    def encode_reference(self, text: str, allow_special: bool = False) -> list[int]:
        """The pure-Python encoder: specials (if allowed) -> chunks -> BPE per chunk."""
        text = _fix_surrogates(text)
        if not (allow_special and self._special_re):
            return self._encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            ids += self._encode_ordinary(text[start:m.start()])
            ids.append(self.specials[m.group()])
            start = m.end()
        return ids + self._encode_ordinary(text[start:])

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in self._pat.findall(text):
            piece = chunk.encode("utf-8")
            found = cache.get(piece)
            if found is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                found = cache[piece] = bpe_chunk(piece, self.ranks)
            ids += found
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        table = self._table
        try:
            out = b"".join([table[i] for i in ids])
            if not ids or min(ids) >= 0:  # subtle: a negative id would index from the end
                return out
        except (IndexError, TypeError):
            pass
        bad = next(i for i in ids if not (0 <= i < len(table)) or table[i] is None)
        raise UsageError(f"token id {bad} is not in this tokenizer's vocabulary (size {self.vocab_size}); "
                         "the model and tokenizer do not match")

    def _decode_table(self) -> list[bytes | None]:
        """id -> bytes; None for ids no token uses (cl100k leaves 100256 empty)."""
        table: list[bytes | None] = [None] * self.vocab_size
        table[self.first_id:self.first_id + len(self.tokens)] = self.tokens
        for name, i in self.specials.items():
            silent = name in (PAD, BOS, EOS) or name == self.eos
            table[i] = b"" if silent else "\ufffd".encode() if name == UNK else name.encode("utf-8")
        return table

    def _build_fast(self):
        """Build (once) a tiktoken Encoding on the same table; False if tiktoken can't be used."""
        try:
            import tiktoken  # noqa: PLC0415 - optional: the pure-Python path works without it
            # subtle: ids are handed over already shifted (ranks start at first_id), so
            # tiktoken's output needs no per-token fix-up in Python.
            self._fast = tiktoken.Encoding(name=f"tinylm-{self.kind}-{self.vocab_size}", pat_str=self.pattern,
                                           mergeable_ranks=self.ranks, special_tokens=self.specials)
        except Exception:  # noqa: BLE001 - not installed, or a custom regex tiktoken's engine rejects
            self._fast = False
        return self._fast

    # ---- JSON form and files ------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The JSON structure stored in tokenizer files and model files (see the module doc)."""
        d = {"type": self.kind, "format": FORMAT_VERSION, "pattern_name": self.pattern_name, "pattern": self.pattern,
             "specials": dict(self.specials), "eos": self.eos, "first_id": self.first_id}
        if self.merges is not None:  # trained: tokens = 256 bytes + one per merge, readable
            d["merges"] = [[escape_bytes(a), escape_bytes(b)] for a, b in self.merges]
        else:  # loaded: token bytes by rank, base64 as in .tiktoken files
            d["ranks"] = [b64(t) for t in self.tokens]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        try:
            return _from_dict(cls, d)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - any malformed field
            raise UsageError(f"BPE tokenizer data is damaged ({type(e).__name__}: {str(e)[:150]}); "
                             "retrain it with `tinylm tokenizer train`") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file atomically (util/files.py: a temp file of this process, then a rename),
        one merge per line."""
        atomic_write_bytes(path, _dump_json(self.to_dict()).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read tokenizer file {path}: {e}; check the path, or create it with `tinylm tokenizer train`") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"tokenizer file {path} is not valid JSON (damaged?): {e}; retrain it with `tinylm tokenizer train`") from None
        if not isinstance(d, dict) or d.get("type") not in ("bpe", "gpt2"):
            kind = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise UsageError(f"tokenizer file {path} does not hold a BPE tokenizer (type {kind!r}); "
                             "pass a file made by `tinylm tokenizer train`")
        try:
            return cls.from_dict(d)
        except UsageError as e:
            raise UsageError(f"tokenizer file {path}: {e}") from None

    def __repr__(self) -> str:
        return f"BPETokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, pattern={self.pattern_name or 'custom'!r})"


def bpe_chunk(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """One pre-split chunk -> ids: merge the lowest-ranked adjacent pair until none is a token.

    ranks {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}, piece b"abcab":
    [a b c a b] -> ab (3) beats bc (4), leftmost first -> [ab c a b] -> [ab c ab] -> ids [3, 2, 3]
    """
    whole = ranks.get(piece)
    if whole is not None:
        return [whole]  # subtle: tiktoken returns a whole-chunk token directly; so must we, to match it
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best):  # strict <: leftmost wins ties
                best, best_i = rank, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def train_bpe(text: str, vocab_size: int, pattern: str = "gpt2", specials: Iterable[str] = DEFAULT_SPECIALS,
              progress: bool | Callable[[int, int], None] = True) -> BPETokenizer:
    """Learn a byte-level BPE tokenizer with `vocab_size` ids in all: specials (ids 0..k-1), the
    256 bytes, then merges. progress=True draws a bar on stderr if it is a terminal; a callable
    gets (merges done, merges wanted). Ties: see bpe_train.py. For a file larger than memory,
    `tokenfile.train_bpe_file` gives the same tokenizer from a streamed pass."""
    specials, pat, _ = check_train_args(vocab_size, pattern, specials)  # subtle: a list now, so it can be read twice
    return train_bpe_from_counts(count_words(text, pat), vocab_size, pattern, specials, progress)


def train_bpe_from_counts(words: Mapping[bytes, int], vocab_size: int, pattern: str = "gpt2",
                          specials: Iterable[str] = DEFAULT_SPECIALS,
                          progress: bool | Callable[[int, int], None] = True) -> BPETokenizer:
    """`train_bpe` from the chunk counts of the text (`bpe_train.count_words`, with the regex of
    `pattern`) instead of the text: the same tokenizer, since merges are learned from the
    counts alone."""
    specials, _, wanted = check_train_args(vocab_size, pattern, specials)
    base = vocab_size - wanted
    bar = ProgressBar() if progress is True else (progress or None)
    merges = learn_merges(words, wanted, bar)
    if len(merges) < wanted:
        if isinstance(bar, ProgressBar) and bar.enabled:
            bar.stream.write("\n")
        raise UsageError(f"the corpus is too small to learn {wanted} merges: only {len(merges)} could be learned "
                         f"(every chunk is already one token); pass --vocab-size {base + len(merges)} or less, or use more text")
    tokens = [bytes([i]) for i in range(256)] + [a + b for a, b in merges]
    return BPETokenizer(tokens, pattern, {s: i for i, s in enumerate(specials)}, first_id=len(specials), merges=merges)


def check_train_args(vocab_size: int, pattern: str, specials: Iterable[str]) -> tuple[list[str], str, int]:
    """Check what `train_bpe` was asked for, before any text is read: (specials as a list, the
    pattern's regex, merges to learn). Raises a UsageError naming the flag."""
    specials = _check_specials(specials)
    _, pat = resolve_pattern(pattern)
    base = len(specials) + 256
    if not isinstance(vocab_size, int) or vocab_size < base:
        raise UsageError(f"--vocab-size {vocab_size} is too small: a byte-level BPE needs at least {base} "
                         f"(256 byte tokens + {len(specials)} special tokens); pass --vocab-size {base} or more")
    return specials, pat, vocab_size - base


def load_gpt2(rank_file: str | os.PathLike | None = None, allow_download: bool = True) -> BPETokenizer:
    """GPT-2's tokenizer; same as BPETokenizer.gpt2()."""
    return BPETokenizer.gpt2(rank_file, allow_download)


def _check_specials(specials: Iterable[str]) -> list[str]:
    specials = list(specials)
    if not all(isinstance(s, str) and s for s in specials) or len(set(specials)) != len(specials):
        raise UsageError(f"special tokens must be distinct non-empty strings, got {specials!r}")
    return specials


def _place_specials(specials: Mapping[str, int] | Iterable[str], n_ranks: int) -> dict[str, int]:
    """{name: id} as given, or names -> ids n_ranks, n_ranks+1, ... (after the last rank)."""
    if isinstance(specials, Mapping):
        return dict(specials)
    return {s: n_ranks + i for i, s in enumerate(_check_specials(specials))}


def _from_dict(cls, d: dict) -> BPETokenizer:
    """Rebuild from `to_dict` output; raises on anything malformed (from_dict words the error)."""
    if d.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise UsageError(f"BPE tokenizer format {d['format']} is newer than this tinylm understands; upgrade tinylm")
    specials = {str(k): int(v) for k, v in d["specials"].items()}
    first_id = int(d["first_id"])
    ids = [first_id, *specials.values()]
    if min(ids) < 0 or max(ids) >= MAX_VOCAB or len(d.get("merges", d.get("ranks", ()))) >= MAX_VOCAB:
        raise ValueError(f"token ids must lie in [0, {MAX_VOCAB})")  # before a decode table of that size is built
    if "merges" in d:
        merges = [(unescape_bytes(a), unescape_bytes(b)) for a, b in d["merges"]]
        tokens = [bytes([i]) for i in range(256)]
        known = set(tokens)
        for a, b in merges:
            if a not in known or b not in known:
                raise ValueError(f"merge ({a!r}, {b!r}) uses a token not learned before it")
            known.add(a + b)
            tokens.append(a + b)
    else:
        merges = None
        tokens = [unb64(t) for t in d["ranks"]]
    return cls(tokens, d["pattern"], specials, first_id, merges, d.get("eos"), d.get("type", "bpe"))


def _dump_json(d: dict) -> str:
    """JSON with the header fields indented and each merge/rank on its own line (diff-friendly)."""
    big = "merges" if "merges" in d else "ranks"
    head = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in d.items() if k != big]
    body = ",\n".join("    " + json.dumps(item, ensure_ascii=False) for item in d[big])
    return "{\n" + ",\n".join(head) + f',\n  "{big}": [\n' + body + "\n  ]\n}\n"


def _fix_surrogates(text: str) -> str:
    """Lone surrogates can't be UTF-8: turn them into U+FFFD exactly as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
