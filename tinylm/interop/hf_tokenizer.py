"""tinylm tokenizers as HuggingFace tokenizer files, and GPT-2-style tokenizer files as tinylm's.

Export (`tokenizer_files`): a `tokenizer.json` that HF `tokenizers` reads with no custom code,
plus `tokenizer_config.json` and `special_tokens_map.json` for `transformers.AutoTokenizer`.
    byte-level BPE (trained, or GPT-2's): a BPE model over GPT-2's byte -> character table, the
        tinylm pre-split regex as a Split pre-tokenizer, then ByteLevel without its own regex.
    char: a WordLevel model over the characters, a pre-tokenizer that isolates every character,
        and a Fuse decoder that joins them with nothing in between.
Import (`read_gpt2_tokenizer`): `tokenizer.json` or `vocab.json` + `merges.txt` of a byte-level
BPE (GPT-2, distilgpt2, or one trained with HF tokenizers) -> a tinylm `BPETokenizer`.

The one semantic gap, and how it is closed. tinylm (like tiktoken) merges the adjacent pair whose
*concatenation* has the lowest id, and returns a chunk that is itself a token directly; HF's BPE
merges the pair listed first in `merges` and, with `ignore_merges`, also returns whole-chunk
tokens directly. So the exported `merges` list every way (a, b) of writing each token as two
tokens, in the order of the tokens' ids: then "lowest-listed pair" is "lowest id of a + b".
Importing goes the other way and is checked: the merges must produce tokens in id order.

Special tokens: tinylm encodes "<EOS>" in plain text as characters, never as id 3 (unless told);
`split_special_tokens` asks transformers for the same. This module reads and writes dicts and
strings only; writing files is hf_export.py's business.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..tokenizers import CharTokenizer, Tokenizer
from ..tokenizers.base import BOS, EOS, PAD, UNK
from ..tokenizers.patterns import GPT2_PATTERN
from ..tokenizers.ranks import ENDOFTEXT
from ..util.errors import UsageError


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (Radford et al. 2019's encoder): bytes that are
    printable Latin-1 characters map to themselves, the other 68 to U+0100 onwards in byte order,
    so a token's bytes become a string with no spaces or control characters.
    >>> t = bytes_to_unicode(); t[ord("a")], t[ord(" ")], t[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHARS = bytes_to_unicode()  # byte -> char
CHAR_BYTES = {c: b for b, c in BYTE_CHARS.items()}  # char -> byte


def token_str(token: bytes) -> str:
    """Token bytes -> the string HF's byte-level vocabularies use: b" the" -> "Ġthe"."""
    return "".join(BYTE_CHARS[b] for b in token)


def token_bytes(s: str) -> bytes | None:
    """Inverse of `token_str`; None if `s` has a character outside the table (not byte-level)."""
    try:
        return bytes(CHAR_BYTES[c] for c in s)
    except KeyError:
        return None


# ---------------------------------------------------------------- export

def _added(specials: dict[str, int]) -> list[dict]:
    return [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for s, i in sorted(specials.items(), key=lambda kv: kv[1])]


def rank_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of every token into two tokens, in the order of the tokens' ids, so that HF's
    "first listed pair" equals tinylm's "lowest id of the concatenation" (module docstring).
    ranks {a: 0, b: 1, ab: 2, bab: 3} -> [(a, b), (b, ab)]: "bab" = b + ab (ba is no token).
    subtle: two different splits of one token get neighbouring ranks here, where tiktoken gives
    them one rank and takes the leftmost; they can only disagree when both splits are adjacent
    pairs of one chunk at once (parts [ab, a, ba]: ab+a and a+ba are both "aba"): rare; the
    tests' texts do not meet it, nor did cl100k's table on 50,000 characters of Shakespeare."""
    merges = []
    for token in sorted(ranks, key=ranks.__getitem__):
        merges += [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
    return merges


_POSSESSIVE_COUNT = re.compile(r"\{\d+(?:,\d*)?\}\+")  # X{n,m}+ (possessive in `regex`)
_ENDING_DIGITS = re.compile(r"\\p\{N\}\{1,3\}\+(?=\||$)")  # \p{N}{1,3}+ as a whole alternative (cl100k)


def onig_pattern(pattern: str) -> str:
    r"""A `regex` pre-split pattern in the syntax of HF tokenizers' Oniguruma, which reads `?+`,
    `*+` and `++` as possessive like `regex` does, but `{1,3}+` as "{1,3}, one or more times".
    cl100k's one such quantifier, `\p{N}{1,3}+`, is a whole alternative, so nothing could
    backtrack into it and the plain `{1,3}` matches the same text; another pattern with one is refused.
    >>> onig_pattern(r"\p{L}+|\p{N}{1,3}+")
    '\\p{L}+|\\p{N}{1,3}'
    """
    fixed = _ENDING_DIGITS.sub(lambda m: m.group()[:-1], pattern)
    if _POSSESSIVE_COUNT.search(fixed):
        raise UsageError("cannot export the tokenizer: its pre-split regex has a possessive counted repeat such as "
                         "{1,3}+, which HF tokenizers' regex engine reads differently")
    return fixed


def bpe_tokenizer_json(tok) -> dict:
    """A tinylm BPETokenizer as an HF tokenizer.json dict."""
    vocab = {token_str(t): i for t, i in tok.ranks.items()}
    clash = [s for s in tok.specials if s in vocab]
    if clash:
        raise UsageError(f"cannot export the tokenizer: its special token {clash[0]!r} is also an ordinary token's "
                         "text, which one HF vocabulary cannot hold twice")
    vocab.update(tok.specials)
    merges = [[token_str(a), token_str(b)] for a, b in rank_merges(tok.ranks)]
    split = {"type": "Split", "pattern": {"Regex": onig_pattern(tok.pattern)}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": _added(tok.specials),
            "normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                                                "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                      "vocab": vocab, "merges": merges}}


def char_tokenizer_json(tok: CharTokenizer) -> dict:
    """A tinylm CharTokenizer as an HF tokenizer.json dict: WordLevel over single characters."""
    long = [c for c in tok.chars if len(c) != 1]
    if long:
        raise UsageError(f"cannot export the char tokenizer: its entry {long[0][:20]!r} is not a single character, "
                         "and HF's per-character split could never produce it")
    vocab = dict(tok.stoi)
    # subtle: [\s\S], not ".", so that newlines are characters too (Oniguruma's "." skips "\n")
    split = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": _added(tok.special_tokens),
            "normalizer": None, "pre_tokenizer": split, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}}


def tokenizer_files(tok: Tokenizer, context_size: int) -> dict[str, str]:
    """file name -> text of the HF tokenizer files for `tok`."""
    if isinstance(tok, CharTokenizer):
        body = char_tokenizer_json(tok)
    else:
        body = bpe_tokenizer_json(tok)
    specials = tok.special_tokens
    roles = {}  # transformers role -> token string
    for role, name in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", UNK), ("pad_token", PAD)):
        if name in specials:
            roles[role] = name
    if getattr(tok, "eos", None) and tok.eos in specials:
        roles["eos_token"] = tok.eos
        roles.setdefault("bos_token", tok.eos)  # GPT-2's convention: <|endoftext|> is both
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_size,
              "clean_up_tokenization_spaces": False, "split_special_tokens": True, **roles}
    return {"tokenizer.json": json.dumps(body, ensure_ascii=False),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            "special_tokens_map.json": json.dumps(roles, indent=2, ensure_ascii=False) + "\n"}


# ---------------------------------------------------------------- import

def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"cannot read {path} ({type(e).__name__}: {str(e)[:100]}); the tokenizer files are damaged") from None


def _from_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[str], str]:
    """(vocab, merges, special token strings, pattern) of an HF tokenizer.json."""
    d = _read_json(path)
    model = d.get("model") if isinstance(d, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise UsageError(f"{path} holds a {kind or 'unknown'} tokenizer model; only byte-level BPE tokenizers "
                         "(GPT-2's kind) can be imported")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    specials = [t["content"] for t in d.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")]
    return model.get("vocab") or {}, merges, specials, _pattern_of(path, d.get("pre_tokenizer"))


def _pattern_of(path: Path, pre: dict | None) -> str:
    """The pre-split regex of a byte-level pre-tokenizer: GPT-2's (ByteLevel with its regex), or a
    Split regex followed by ByteLevel without one (what `bpe_tokenizer_json` writes)."""
    parts = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if not all(isinstance(p, dict) for p in parts) or parts[-1].get("type") != "ByteLevel":
        raise UsageError(f"{path}: the pre-tokenizer is not byte-level (GPT-2's ByteLevel); only byte-level BPE tokenizers "
                         "can be imported")
    if parts[-1].get("add_prefix_space"):
        raise UsageError(f"{path}: the tokenizer adds a space before the text (add_prefix_space), which tinylm's "
                         "tokenizers do not do; save it with add_prefix_space=false")
    if len(parts) == 1 and parts[0].get("use_regex", True):
        return GPT2_PATTERN
    if len(parts) == 2 and parts[0].get("type") == "Split" and isinstance(parts[0].get("pattern"), dict) \
            and isinstance(parts[0]["pattern"].get("Regex"), str) and parts[0].get("behavior") == "Isolated":
        return parts[0]["pattern"]["Regex"]
    raise UsageError(f"{path}: this pre-tokenizer layout is not one tinylm can reproduce (GPT-2's ByteLevel, or a Split "
                     "regex then ByteLevel)")


def _from_vocab_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[str], str]:
    """(vocab, merges, special token strings, pattern) of GPT-2's vocab.json + merges.txt."""
    vocab = _read_json(folder / "vocab.json")
    if not isinstance(vocab, dict):
        raise UsageError(f"{folder / 'vocab.json'} must hold a JSON object (token -> id)")
    try:
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {folder / 'merges.txt'} ({type(e).__name__}); the tokenizer files are damaged") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    specials = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            conf = _read_json(folder / name)
            if isinstance(conf, dict):
                if conf.get("add_prefix_space"):
                    raise UsageError(f"{folder / name}: add_prefix_space is on, which tinylm's tokenizers do not do")
                for role in ("bos_token", "eos_token", "unk_token", "pad_token"):
                    v = conf.get(role)
                    v = v.get("content") if isinstance(v, dict) else v
                    if isinstance(v, str) and v in vocab and v not in specials:
                        specials.append(v)
    if ENDOFTEXT in vocab and ENDOFTEXT not in specials:
        specials.append(ENDOFTEXT)
    return vocab, merges, specials, GPT2_PATTERN


def read_gpt2_tokenizer(folder: Path):
    """The byte-level BPE tokenizer of an HF model folder as a tinylm BPETokenizer (ids kept)."""
    from ..tokenizers.bpe import BPETokenizer  # noqa: PLC0415

    if (folder / "tokenizer.json").is_file():
        vocab, merges, specials, pattern = _from_tokenizer_json(folder / "tokenizer.json")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab, merges, specials, pattern = _from_vocab_merges(folder)
    else:
        raise UsageError(f"{folder} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); copy the model's "
                         "tokenizer files into it")
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()):
        raise UsageError(f"{folder}: the tokenizer's vocabulary must map token strings to ids >= 0")
    special_ids = {s: vocab[s] for s in specials if s in vocab}
    by_id = sorted((i, s) for s, i in vocab.items() if s not in special_ids)
    tokens = []
    for _, s in by_id:
        b = token_bytes(s)
        if b is None:
            raise UsageError(f"{folder}: the token {s[:20]!r} is not byte-level (GPT-2's byte table); only byte-level BPE "
                             "tokenizers can be imported")
        tokens.append(b)
    first = by_id[0][0] if by_id else 0
    if [i for i, _ in by_id] != list(range(first, first + len(by_id))):
        raise UsageError(f"{folder}: the tokenizer's ordinary token ids are not one unbroken range, which tinylm's BPE needs")
    _check_merge_order(folder, {t: first + n for n, t in enumerate(tokens)}, merges)
    eos = ENDOFTEXT if ENDOFTEXT in special_ids else (EOS if EOS in special_ids else None)
    try:
        return BPETokenizer(tokens, pattern, special_ids, first_id=first, eos=eos, kind="gpt2")
    except ValueError as e:
        raise UsageError(f"{folder}: the tokenizer cannot be rebuilt ({e})") from None


def _check_merge_order(folder: Path, ranks: dict[bytes, int], merges: list[tuple[str, str]]) -> None:
    """tinylm merges by the id of the merged token: that agrees with HF's merge list only if the
    list makes tokens in id order and every merged token is in the vocabulary."""
    last = -1
    for n, pair in enumerate(merges):
        parts = [token_bytes(p) for p in pair] if len(pair) == 2 else [None]
        made = ranks.get(parts[0] + parts[1]) if None not in parts else None
        if made is None:
            raise UsageError(f"{folder}: merge {n + 1} ({' '.join(pair)[:40]!r}) is malformed or makes a token the "
                             "vocabulary lacks; the tokenizer files are damaged")
        if made < last:
            raise UsageError(f"{folder}: merge {n + 1} makes token id {made} after id {last}; tinylm's BPE needs merges in "
                             "the order of the ids they make (as GPT-2's are)")
        last = max(last, made)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UsageError(f"{folder}: the vocabulary lacks {len(missing)} of the 256 single bytes, so some text could not be encoded")
