"""Token files: a text corpus tokenized once into a memory-mapped file of ids, and batches from it.

Over `data/batches.py`, which reads the whole text and holds its ids as one int64 tensor, this adds a
path for corpora larger than memory:
1. `scan_text` streams the file once in blocks: its sha256, its size, its set of characters
   (enough to build a char vocabulary) and the same checks, worded the same, as `read_text`.
2. `token_file` tokenizes it, block by block, into `cache_dir()/tokens/<key>.bin`: raw uint16
   ids when the vocabulary fits (<= 65536 ids), else uint32. The key hashes the text's sha256
   with the tokenizer's JSON, so a second run with the same text and tokenizer maps the file
   it already has instead of tokenizing again. It returns a read-only `np.memmap`: pages are
   read from disk as batches touch them, and the OS may drop them again under memory pressure.
3. `tokenstream.split_memmap` cuts the ids into a `data.TokenSplit` of `TokenWindows`: views of
   the memmap that hand out int64 windows (data/tokenstream.py also keeps them on the GPU when they fit).
4. `train_bpe_file` trains a BPE tokenizer on the file in the same kind of pass: the pieces
   between safe cuts (below) are pre-split and their chunks counted (`count_file_words`), so
   memory holds one block and the table of distinct chunks, never the text. The merges equal
   `train_bpe(read_text(path))`'s.

Exactness. Streaming must give the ids of `tokenizer.encode(whole_text)`. A char tokenizer may
be cut anywhere. A BPE tokenizer pre-splits text with a regex, and a cut is safe only where
that regex would put a chunk boundary anyway and nothing before the cut looks past it; see
`_last_safe_cut` for the two kinds of cut that hold for the GPT-2 and cl100k patterns. A
custom pattern, or another tokenizer kind, is encoded (or, for BPE training, counted) whole:
correct, but in memory.

This module does not learn merges (bpe_train.py does, from counts), decide the train/val
fraction, hand out batches (data/tokenstream.py), or run training.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NoReturn

import numpy as np

from .batches import binary_text, check_regular_file, empty_text, not_utf8, unreadable
from .corpus import cache_dir
from ..util.errors import UsageError
from ..util.log import ByteBar, log
from ..tokenizers import DEFAULT_SPECIALS, UNK, CharTokenizer, Tokenizer

FORMAT_VERSION = 1  # bump when the .bin layout or the key changes: old files are then ignored
BLOCK_BYTES = 4 << 20  # read size: large enough to amortise encode() calls, small next to RAM
NUL_WINDOW = 1 << 20  # read_text looks for NUL bytes in this much of the file; so do we
SAFE_PATTERNS = ("gpt2", "cl100k")  # BPE patterns `_last_safe_cut` is proven for


# ---- reading the text ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TextInfo:
    path: Path
    sha256: str  # hex digest of the file's bytes (== sha256 of read_text(path).encode())
    nbytes: int
    chars: frozenset[str]  # every character in the text; CharTokenizer(sorted(chars)) is its vocabulary


class _TextReader:
    """One streaming pass over a UTF-8 file, with read_text's checks and wording. Iterate
    `blocks()` for (raw bytes, decoded text) pairs; `sha256` and `nbytes` grow as it goes.
    A multi-byte character split across two reads is held back by the incremental decoder and
    comes out with the next block."""

    def __init__(self, path: str | os.PathLike, flag: str = "-d/--dataset", block_bytes: int = BLOCK_BYTES):
        self.path, self.flag, self.block_bytes = Path(path), flag, block_bytes
        self.hash = hashlib.sha256()
        self.nbytes = 0
        self.blank = True  # only ASCII whitespace so far (bytes.strip() would leave nothing)

    @property
    def sha256(self) -> str:
        return self.hash.hexdigest()

    def blocks(self) -> Iterator[tuple[bytes, str]]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        with self._open() as f:
            while raw := self._read(f):
                if self.nbytes < NUL_WINDOW and b"\x00" in raw[:NUL_WINDOW - self.nbytes]:
                    self._binary()
                text = self._decode(decoder, raw, final=False)
                if b"\x00" in raw:  # past the first MiB (valid UTF-8 up to here): binary all the same
                    self._binary()
                self.hash.update(raw)
                self.nbytes += len(raw)
                self.blank = self.blank and not raw.strip()
                yield raw, text
        self._decode(decoder, b"", final=True)  # raises on a truncated last character, else ""
        if self.blank:
            raise empty_text(self.path)

    def _open(self) -> BinaryIO:
        p, flag = self.path, self.flag
        check_regular_file(p, "dataset", flag)  # a FIFO would block here, and could be read only once
        try:
            return open(p, "rb")  # noqa: SIM115 - closed by blocks()
        except OSError as e:
            self._unreadable(e)

    def _read(self, f: BinaryIO) -> bytes:
        try:
            return f.read(self.block_bytes)
        except OSError as e:
            self._unreadable(e)

    def _unreadable(self, e: OSError) -> NoReturn:
        raise unreadable(self.path, e) from None

    def _binary(self) -> NoReturn:
        raise binary_text(self.path)

    def _decode(self, decoder, raw: bytes, final: bool) -> str:
        held = decoder.getstate()[0]  # bytes of an unfinished character from the previous block
        try:
            return decoder.decode(raw, final)
        except UnicodeDecodeError as e:
            # subtle: read_text reports NUL bytes in the first MiB before bad UTF-8 anywhere, and
            # blocks may be smaller than that MiB, so look ahead before blaming the encoding.
            with open(self.path, "rb") as f:
                if b"\x00" in f.read(NUL_WINDOW):
                    self._binary()
            p, offset = self.path, self.nbytes - len(held) + e.start  # e.start counts from `held`
            raise not_utf8(p, e.object[e.start], offset) from None


def scan_text(path: str | os.PathLike, flag: str = "-d/--dataset", block_bytes: int = BLOCK_BYTES) -> TextInfo:
    """Stream `path` once, never holding more than a block: its hash, size and characters.
    Raises the UsageError read_text would raise for the same file."""
    reader = _TextReader(path, flag, block_bytes)
    seen = np.zeros(128, dtype=bool)  # seen[code point]; grows when a larger one turns up
    for raw, text in reader.blocks():
        if raw.isascii():  # most text: the bytes already are the code points
            codes = np.frombuffer(raw, dtype=np.uint8)
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        present = np.bincount(codes) > 0  # much faster than set(text) on megabytes
        if len(present) > len(seen):
            seen = np.concatenate([seen, np.zeros(len(present) - len(seen), dtype=bool)])
        seen[:len(present)] |= present
    chars = frozenset(chr(c) for c in np.flatnonzero(seen))
    return TextInfo(Path(path), reader.sha256, reader.nbytes, chars)


# ---- tokenizing into a cached file --------------------------------------------------------------

def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and page cache of uint32), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def cache_key(info: TextInfo, tokenizer: Tokenizer, replace_unknown: bool = False) -> str:
    """Token files are named by what determines their content: the text and the tokenizer, and
    whether characters outside the vocabulary became <UNK> (only said when some did, so such a
    file is never taken for one a run without `unknown="replace"` would accept)."""
    unknown = "\nunknown=replace" if replace_unknown else ""
    return hashlib.sha256(f"tinylm-tokens-v{FORMAT_VERSION}\n{info.sha256}\n{_tokenizer_hash(tokenizer)}{unknown}"
                          .encode()).hexdigest()


def token_file(path: str | os.PathLike, tokenizer: Tokenizer, info: TextInfo | None = None,
               progress: bool = True, unknown: str = "error") -> np.ndarray:
    """All token ids of the text file `path`, as a read-only memmap of shape (N,), dtype
    `id_dtype(tokenizer.vocab_size)`. Equal to `tokenizer.encode(read_text(path))`, or for a
    char tokenizer and unknown="replace" to `tokenizer.encode(read_text(path), unknown="replace")`
    (characters outside its vocabulary become <UNK>; other tokenizers have none).

    Reuses `cache_dir()/tokens/<cache_key>.bin` when its sidecar `.json` vouches for it; else
    tokenizes the file in blocks, writing ids as it goes, and publishes the file atomically.
    `info` (from an earlier `scan_text`) saves one read of the file for the hash."""
    info = info if info is not None else scan_text(path)
    dtype = id_dtype(tokenizer.vocab_size)
    replace = unknown == "replace" and _has_unknown(info, tokenizer)
    key = cache_key(info, tokenizer, replace)
    bin_path = cache_dir() / "tokens" / f"{key}.bin"
    count = _cached_count(bin_path, dtype)
    if count and not _ids_in_range(bin_path, dtype, count, tokenizer.vocab_size):
        log.warning("the token cache %s holds ids past the vocabulary of %d (damaged); tokenizing the text again",
                    bin_path, tokenizer.vocab_size)
        count = None
    if count is None:
        count = _write_token_file(Path(path), tokenizer, info, bin_path, dtype, progress, replace)
    if count == 0:  # unreachable for text read_text accepts; np.memmap cannot map 0 bytes
        return np.zeros(0, dtype=dtype)
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))


def _ids_in_range(bin_path: Path, dtype: np.dtype, count: int, vocab_size: int) -> bool:
    """Whether every id of a cached token file is below vocab_size: a damaged cache must not reach
    the embedding (IndexError). One pass over the file in blocks of about 64 MB."""
    ids = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
    step = 1 << 25
    return all(int(ids[lo:lo + step].max()) < vocab_size for lo in range(0, count, step))


def _has_unknown(info: TextInfo, tokenizer: Tokenizer) -> bool:
    """Whether a char tokenizer lacks some character of the text (a BPE one lacks none)."""
    return isinstance(tokenizer, CharTokenizer) and not info.chars <= tokenizer.stoi.keys()


def _tokenizer_hash(tokenizer: Tokenizer) -> str:
    canonical = json.dumps(tokenizer.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _cached_count(bin_path: Path, dtype: np.dtype) -> int | None:
    """Number of ids in a finished token file, or None if it is missing, partial or foreign."""
    try:
        meta = json.loads(bin_path.with_suffix(".json").read_text(encoding="utf-8"))
        ok = meta["format"] == FORMAT_VERSION and meta["dtype"] == dtype.name
        return int(meta["count"]) if ok and bin_path.stat().st_size == int(meta["count"]) * dtype.itemsize else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_token_file(path: Path, tokenizer: Tokenizer, info: TextInfo, bin_path: Path, dtype: np.dtype,
                      progress: bool, replace_unknown: bool = False) -> int:
    """Tokenize `path` into bin_path via a temp file; the sidecar goes last, so a file without a
    matching sidecar (a crash, a kill) is never trusted. Returns the number of ids."""
    tmp = bin_path.with_name(f"{bin_path.name}.tmp{os.getpid()}")
    reader = _TextReader(path, block_bytes=BLOCK_BYTES)  # looked up now, so tests can shrink it
    bar = ByteBar(f"Tokenizing {path.name}", info.nbytes, progress)
    count = 0
    try:
        bin_path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            for ids in _encode_blocks(reader, tokenizer, bar, replace_unknown):
                np.asarray(ids, dtype=dtype).tofile(out)  # subtle: numpy raises if an id does not fit dtype
                count += len(ids)
        bar.close()
        if reader.sha256 != info.sha256:
            raise UsageError(f"dataset {path} changed while it was being tokenized; run again once it is complete")
        os.replace(tmp, bin_path)
        meta = {"format": FORMAT_VERSION, "count": count, "dtype": dtype.name, "source": str(path.resolve()),
                "source_sha256": info.sha256, "source_bytes": info.nbytes, "tokenizer": tokenizer.kind,
                "tokenizer_sha256": _tokenizer_hash(tokenizer), "vocab_size": tokenizer.vocab_size}
        if replace_unknown:
            meta["unknown"] = "replace"
        side_tmp = bin_path.with_name(f"{bin_path.stem}.json.tmp{os.getpid()}")
        side_tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(side_tmp, bin_path.with_suffix(".json"))
    except OSError as e:
        raise UsageError(f"cannot write the token file {bin_path} ({e.strerror or e}); free some disk space, "
                         "or set TINYLM_CACHE to a folder with room") from None
    finally:
        bar.close()
        with contextlib.suppress(OSError):  # e.g. no folder to remove it from
            tmp.unlink(missing_ok=True)
    return count


def _encode_blocks(reader: _TextReader, tokenizer: Tokenizer, bar: ByteBar,
                   replace_unknown: bool = False) -> Iterator[list[int] | np.ndarray]:
    """Ids of the whole text, in pieces: the ids of each `_safe_pieces` piece."""
    encode = _fast_encoder(tokenizer, replace_unknown)
    last_cut = _any_cut if tokenizer.kind == "char" else _cut_rule(getattr(tokenizer, "pattern_name", None))
    for piece in _safe_pieces(reader, last_cut, bar):
        yield encode(piece)


CutRule = Callable[[str, int], int]  # (text, lo) -> the last safe cut p, lo <= p < len(text), or 0 if none


def _any_cut(text: str, lo: int) -> int:
    return len(text)  # a char tokenizer may be cut anywhere


def _no_cut(text: str, lo: int) -> int:
    return 0  # no cut is known to be safe: the text goes whole


def _cut_rule(pattern_name: str | None) -> CutRule:
    """Where text may be cut for a BPE pre-split pattern (by name; None = a custom regex)."""
    return _last_safe_cut if pattern_name in SAFE_PATTERNS else _no_cut


def _safe_pieces(reader: _TextReader, last_cut: CutRule, bar: ByteBar) -> Iterator[str]:
    """The whole text in pieces that join back to it. Each block's text is cut at its last safe
    point (see `_last_safe_cut`); what follows waits for the next block, so no chunk of the BPE
    pre-split ever straddles a cut. Pieces are about a block long; with no safe cut at all
    (`_no_cut`, or a text without one) the one piece is the whole text."""
    pending: list[str] = []  # text since the last cut, in pieces (joined only at a cut: linear time)
    n_pending = 0
    tail = ""  # the last two characters of pending: the context a cut at the seam needs
    for _, block in reader.blocks():
        window = tail + block
        p = last_cut(window, 1)  # from 1: 0 is the start of the text, or was ruled out before
        if p:
            text = "".join(pending) + block
            cut = n_pending - len(tail) + p
            yield text[:cut]
            pending, n_pending = [text[cut:]], len(text) - cut
        else:
            pending.append(block)
            n_pending += len(block)
        tail = window[-2:]
        bar.update(reader.nbytes)
    if n_pending:
        yield "".join(pending)


# A cut at p (text[:p] | text[p:]) is safe for the GPT-2 and cl100k patterns when
# 1. text[p-2:p+1] is X "\n" Y with X and Y not whitespace: every alternative that can take a
#    "\n" (whitespace runs; cl100k's punctuation + newlines) stops at Y and cannot start
#    before X, so "\n" (or "X\n") ends a chunk at p, and no match before p looks beyond it;
# 2. text[p-1:p+2] is letter " " letter (ASCII): a letter run ends at p, " Y..." starts a new
#    chunk (` ?\p{L}+` in GPT-2, `[^\r\n\p{L}\p{N}]?+\p{L}++` in cl100k).
# subtle: NOT after "\r\n" (GPT-2 splits "\r\nWord" into "\r" "\n" "Word", but keeps a final
# "\r\n" whole), and NOT before any other whitespace (a run gives its last space to the next word).
# Python's \s covers every character either regex engine calls whitespace, so \S is safe.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)|(?<=[A-Za-z])(?= [A-Za-z])")


def _last_safe_cut(text: str, lo: int) -> int:
    """The largest safe cut p with lo <= p < len(text), or 0 if there is none. Looks at the last
    64 Ki characters first, where a cut almost always is.
    >>> _last_safe_cut("one\\ntwo\\n  three", 0)
    4
    """
    for start in (max(lo, len(text) - (1 << 16)), lo):
        last = None
        for last in _SAFE_CUT.finditer(text, start):
            pass
        if last is not None:
            return last.start()
        if start == lo:
            break
    return 0


def _fast_encoder(tokenizer: Tokenizer, replace_unknown: bool = False) -> Callable[[str], list[int] | np.ndarray]:
    """`tokenizer.encode` (with unknown="replace" if asked), or for a plain CharTokenizer the same
    mapping as a numpy table lookup on code points (~20x faster). Without replace_unknown, text
    with a character outside the vocabulary goes through `encode` itself, so it fails with the
    usual error; with it, such characters get <UNK>'s id, as `encode` would give them."""
    def slow(text: str) -> list[int]:
        return tokenizer.encode(text, unknown="replace") if replace_unknown else tokenizer.encode(text)

    if type(tokenizer) is not CharTokenizer or not all(len(c) == 1 for c in tokenizer.chars) or not tokenizer.chars:
        return slow
    codes = np.array([ord(c) for c in tokenizer.chars])
    table = np.full(int(codes.max()) + 2, -1, dtype=np.int32)  # code point -> id; last slot: "too large"
    table[codes] = [tokenizer.stoi[c] for c in tokenizer.chars]
    unk = tokenizer.stoi.get(UNK) if replace_unknown else None

    def encode(text: str) -> list[int] | np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = table[np.minimum(cps, len(table) - 1)]  # a new array: ours to change
        unknown = ids < 0
        if not unknown.any():
            return ids
        if unk is None:
            return slow(text)
        ids[unknown] = unk
        return ids

    return encode


# ---- training a BPE tokenizer from a file ------------------------------------------------------

def count_file_words(path: str | os.PathLike, pattern: str = "gpt2", progress: bool = True,
                     info: TextInfo | None = None) -> dict[bytes, int]:
    """`bpe_train.count_words(read_text(path), pattern)` in one streamed pass, equal to it key for
    key, count for count and in the same order: the pieces between safe cuts are pre-split one
    by one. Memory: a block, plus the table of distinct chunks. `info` (from `scan_text`) gives
    the size for the progress bar, and the file must still have the hash it recorded."""
    from ..tokenizers.bpe_train import count_words  # noqa: PLC0415 - keeps the char path free of regex
    from ..tokenizers.patterns import resolve_pattern  # noqa: PLC0415

    name, regex_str = resolve_pattern(pattern)
    path = Path(path)
    reader = _TextReader(path, block_bytes=BLOCK_BYTES)
    total = info.nbytes if info is not None else _size_or_zero(path)
    bar = ByteBar(f"Counting BPE chunks in {path.name}", total, progress)
    try:
        words = count_words(_safe_pieces(reader, _cut_rule(name), bar), regex_str)
    finally:
        bar.close()
    if info is not None and reader.sha256 != info.sha256:
        raise UsageError(f"dataset {path} changed while it was being read; run again once it is complete")
    return words


def train_bpe_file(path: str | os.PathLike, vocab_size: int, pattern: str = "gpt2",
                   specials: Iterable[str] = DEFAULT_SPECIALS, progress: bool | Callable[[int, int], None] = True,
                   info: TextInfo | None = None) -> Tokenizer:
    """`bpe.train_bpe(read_text(path), ...)` without holding the text: the same merges, bit for
    bit, from `count_file_words`. progress=False silences both bars (counting, then merges)."""
    from ..tokenizers.bpe import check_train_args, train_bpe_from_counts  # noqa: PLC0415

    specials, _, _ = check_train_args(vocab_size, pattern, specials)  # a bad --vocab-size fails before the long pass
    words = count_file_words(path, pattern, progress is not False, info)
    return train_bpe_from_counts(words, vocab_size, pattern, specials, progress)


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # the reader raises the right error when it opens the file
