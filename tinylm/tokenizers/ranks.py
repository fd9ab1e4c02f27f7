"""BPE rank tables from outside tinylm: tiktoken's `.tiktoken` files and GPT-2's encoding.

A rank table maps token bytes to a rank; lower ranks merge first, and for these tables a
token's id *is* its rank. This module owns reading such tables (plain or gzipped), getting
GPT-2's table (from tiktoken's cache or download, or from a local file), and the two ways token
bytes are written as text in tinylm's JSON (base64, and a readable escape). It does not encode
text; `bpe.BPETokenizer` does.

The `.tiktoken` format is one token per line: `base64(token bytes) rank`, e.g. `IA== 220` is
the token b" " with rank 220.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import regex

from ..util.errors import UsageError

GPT2_RANKS_ENV = "TINYLM_GPT2_RANKS"  # path of a local GPT-2 rank file (r50k_base.tiktoken)
GPT2_RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_N_RANKS = 50256  # GPT-2 has 50257 ids: these ranks plus <|endoftext|>
ENDOFTEXT = "<|endoftext|>"
CL100K_SPECIALS = {  # cl100k_base's special tokens (rank 100256 is unused)
    "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276,
}


def load_tiktoken_file(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a `.tiktoken` rank file (gzip detected by its magic bytes) -> {token bytes: rank}."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise UsageError(f"cannot read rank file {path}: {e}; check the path") from None
    return parse_tiktoken(raw, str(path))


def parse_tiktoken(raw: bytes, source: str) -> dict[bytes, int]:
    """`.tiktoken` text -> {token bytes: rank}, with a clear error on any damaged line.

    >>> parse_tiktoken(b"IQ== 0\\nIg== 1\\n", "x")
    {b'!': 0, b'"': 1}
    """
    ranks: dict[bytes, int] = {}  # token bytes -> rank
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok64, rank = line.split()
            ranks[base64.b64decode(tok64, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            shown = line[:60].decode("utf-8", "replace")
            raise UsageError(f"rank file {source} line {n} is not `base64 rank`: {shown!r} (damaged or not a .tiktoken file?)") from None
    if len(set(ranks.values())) != len(ranks):
        raise UsageError(f"rank file {source} gives two tokens the same rank (damaged?)")
    return ranks


def ranks_to_tokens(ranks: dict[bytes, int], source: str) -> list[bytes]:
    """{token bytes: rank} with ranks 0..n-1 -> tokens listed by rank; checks byte coverage."""
    tokens = sorted(ranks, key=ranks.__getitem__)
    if [ranks[t] for t in tokens] != list(range(len(tokens))):
        raise UsageError(f"rank file {source} has gaps in its ranks; tinylm needs ranks 0..n-1 with no gaps")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UsageError(f"rank file {source} lacks {len(missing)} of the 256 single bytes (e.g. {missing[0]}), so some text could not be encoded")
    return tokens


def gpt2_ranks(rank_file: str | os.PathLike | None = None, allow_download: bool = True) -> tuple[dict[bytes, int], str]:
    """GPT-2's BPE table -> ({token bytes: rank}, where it came from).

    Looks, in order, at `rank_file`, the file named by $TINYLM_GPT2_RANKS, and tiktoken's
    "gpt2" encoding (its cache, TIKTOKEN_CACHE_DIR, or a download unless allow_download=False).
    """
    rank_file = rank_file or os.environ.get(GPT2_RANKS_ENV) or None
    if rank_file is not None:
        ranks = load_tiktoken_file(rank_file)
        if len(ranks) != GPT2_N_RANKS:
            raise UsageError(f"{rank_file} has {len(ranks)} ranks, but GPT-2's table has {GPT2_N_RANKS}; point {GPT2_RANKS_ENV} at r50k_base.tiktoken")
        return ranks, str(rank_file)
    how = (f"download {GPT2_RANKS_URL} on a machine with network access and set {GPT2_RANKS_ENV}=/path/to/r50k_base.tiktoken, "
           "or set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files")
    try:
        import tiktoken  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise UsageError(f"the GPT-2 tokenizer needs tiktoken (pip install tiktoken) or a local rank file: {how}") from None
    if not allow_download and not _tiktoken_gpt2_cached():
        raise UsageError(f"GPT-2's BPE ranks are not in tiktoken's cache and downloading is off: {how}")
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise UsageError(f"could not get GPT-2's BPE ranks through tiktoken ({type(e).__name__}: {str(e)[:120]}); {how}") from None
    # tiktoken's README builds new encodings from these attributes, so they are stable enough.
    return dict(enc._mergeable_ranks), "tiktoken:gpt2"


def _tiktoken_gpt2_cached() -> bool:
    """Whether tiktoken's cache already holds both gpt2 files (it names each by the URL's sha1)."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache = cache or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    keys = [hashlib.sha1((base + f).encode()).hexdigest() for f in ("vocab.bpe", "encoder.json")]
    return all(os.path.exists(os.path.join(cache, k)) for k in keys)


def b64(token: bytes) -> str:
    return base64.b64encode(token).decode("ascii")


def unb64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def escape_bytes(token: bytes) -> str:
    """Token bytes -> readable text: UTF-8 as itself, '\\' doubled, other bytes as \\xNN.

    >>> escape_bytes(b" the"), escape_bytes(b"a\\\\b"), escape_bytes(b"\\xe2\\x82")
    (' the', 'a\\\\\\\\b', '\\\\xe2\\\\x82')
    """
    return token.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPE = regex.compile(r"(\\\\|\\x[0-9a-f]{2})")


def unescape_bytes(text: str) -> bytes:
    """Inverse of `escape_bytes`.

    >>> unescape_bytes("a\\\\\\\\b\\\\xe2")
    b'a\\\\b\\xe2'
    """
    out = []
    for part in _ESCAPE.split(text):
        if part == "\\\\":
            out.append(b"\\")
        elif part.startswith("\\x") and len(part) == 4:
            out.append(bytes([int(part[2:], 16)]))
        else:
            out.append(part.encode("utf-8"))
    return b"".join(out)
