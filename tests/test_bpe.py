"""BPE tokenizer: training by hand-checked example, round trips, specials, files, user errors.

Equivalence with tiktoken (and between tinylm's two encoders) is in test_bpe_tiktoken.py.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.util.errors import UsageError
from tinylm.tokenizers import from_dict
from tinylm.tokenizers.bpe import BPETokenizer, load_gpt2, train_bpe
from tinylm.tokenizers.bpe_train import count_words, learn_merges
from tinylm.tokenizers.ranks import b64, escape_bytes, unescape_bytes

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. The dog didn't care; it's lazy, and the fox's "
    "jumps were 1234 times higher than they'd been in 1999. Ünïcödé wörds, 日本語のテキスト, "
    "emoji 🎉🎉 and    odd   spacing\n\n\tall appear here.\n"
) * 20


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return train_bpe(PARAGRAPH, 400, progress=False)


# ---- training -------------------------------------------------------------------------------------

def test_hand_checked_merges():
    # "aaabdaaabac" is one chunk. Pair counts: aa 4, ab 2, the rest 1 -> merge (a, a) = Z:
    #   Z a b d Z a b a c: now (Z, a) 2 and (a, b) 2 tie; bytes (b"a", b"b") < (b"aa", b"a") -> Y = ab
    #   Z Y d Z Y a c: (Z, Y) 2 -> X = aaab
    #   X d X a c: all pairs 1; smallest bytes is (b"a", b"c") -> W = ac
    assert learn_merges({b"aaabdaaabac": 1}, 4) == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab"), (b"a", b"c")]
    t = train_bpe("aaabdaaabac", 4 + 256 + 3, progress=False)
    X = 4 + 256 + 2  # ids: 4 specials, 256 bytes, then aa, ab, aaab
    assert t.encode("aaabdaaabac") == [X, 4 + ord("d"), X, 4 + ord("a"), 4 + ord("c")]
    assert t.encode_reference("aaabdaaabac") == t.encode("aaabdaaabac")


def naive_merges(words: dict[bytes, int], n: int) -> list[tuple[bytes, bytes]]:
    """The textbook algorithm: recount every pair after every merge. Same tie rule: highest
    count, then smallest (left bytes, right bytes); a merge whose bytes exist adds no token."""
    seqs = {w: [bytes([c]) for c in w] for w in words}  # word -> its tokens, as bytes
    vocab, out = {bytes([i]) for i in range(256)}, []
    while len(out) < n:
        counts = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        for w, seq in seqs.items():
            merged, i = [], 0
            while i < len(seq):
                if tuple(seq[i:i + 2]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            seqs[w] = merged
        if best[0] + best[1] not in vocab:
            vocab.add(best[0] + best[1])
            out.append(best)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_equals_naive(seed):
    rng = random.Random(seed)
    # few distinct letters -> many repeated pairs, ties, runs like "aaaa" and re-made byte strings
    text = "".join(rng.choice("aab  bc\nd'é") for _ in range(3000)) + PARAGRAPH[: 400 * seed]
    words = count_words(text, r" ?\w+| ?[^\w\s]+|\s+")
    assert learn_merges(words, 150) == naive_merges(words, 150)


def test_merges_never_cross_chunks():
    # " ab" and "ab" are different chunks; the pair (b, " ") never exists
    merges = learn_merges(count_words("ab ab ab", r" ?\w+"), 10)
    assert (b"b", b" ") not in merges and merges[0] == (b"a", b"b")


def test_overlapping_pairs_merge_left_to_right():
    # "aaaa" x 1: (a, a) -> Z gives Z Z (not Z a a), then (Z, Z)
    assert learn_merges({b"aaaa": 1}, 5) == [(b"a", b"a"), (b"aa", b"aa")]


def test_deterministic_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    train_bpe(PARAGRAPH, 400, progress=False).save(a)
    train_bpe(PARAGRAPH, 400, progress=False).save(b)
    assert a.read_bytes() == b.read_bytes()


def test_vocab_layout(tok):
    assert tok.vocab_size == 400
    assert tok.special_tokens == {"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3}
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 3, 2)
    assert tok.encode("A") == [4 + ord("A")]  # byte tokens start at id 4


def test_progress_callback():
    seen = []
    train_bpe(PARAGRAPH, 300, progress=lambda done, total: seen.append((done, total)), specials=())
    assert seen[0] == (1, 44) and seen[-1] == (44, 44)


# ---- round trips ----------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=200))
def test_text_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes(tok.encode_reference(text)) == text.encode("utf-8")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_any_bytes_decode(tok, data):
    # every byte has its own token, so any byte string (valid UTF-8 or not) is representable
    assert tok.decode_bytes([tok.first_id + b for b in data]) == data


def test_decode_bad_id(tok):
    for bad in (tok.vocab_size, -1):
        with pytest.raises(UsageError, match="not in this tokenizer's vocabulary"):
            tok.decode([5, bad])


def test_escape_round_trip():
    rng = random.Random(0)
    samples = [b"", b"\\", b"\\x41", b"\\\\x", b"caf\xc3\xa9", b"\xe2\x82", b"\xff\x00\n"]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(8))) for _ in range(500)]
    for s in samples:
        assert unescape_bytes(escape_bytes(s)) == s


# ---- special tokens -------------------------------------------------------------------------------

def test_specials_plain_text_by_default(tok):
    ids = tok.encode("hi<EOS>")
    assert 3 not in ids and tok.decode(ids) == "hi<EOS>"
    assert tok.encode("hi<EOS>", allow_special=True) == tok.encode("hi") + [3]
    assert tok.encode_reference("<BOS>x<EOS>", allow_special=True) == [2] + tok.encode("x") + [3]


def test_special_decoding(tok):
    # as CharTokenizer: control tokens print nothing, <UNK> prints U+FFFD
    assert tok.decode([2, 4 + ord("a"), 1, 3, 0]) == "a\ufffd"


def test_extra_specials():
    t = train_bpe(PARAGRAPH, 300, specials=("<PAD>", "<UNK>", "<BOS>", "<EOS>", "<|user|>"), progress=False)
    assert t.special_tokens["<|user|>"] == 4 and t.first_id == 5
    ids = t.encode("<|user|>fox", allow_special=True)
    assert ids[0] == 4 and t.decode(ids) == "<|user|>fox"  # non-control specials decode to their text
    assert t.encode("<|user|>fox", allow_special=True) == t.encode_reference("<|user|>fox", allow_special=True)


# ---- JSON form and files --------------------------------------------------------------------------

def test_save_load_same_ids(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["type"] == "bpe" and d["merges"][0] and d["pattern_name"] == "gpt2"
    loaded = BPETokenizer.load(path)
    again = from_dict(tok.to_dict())  # the path a model file takes
    for t in (loaded, again):
        assert t.encode(PARAGRAPH) == tok.encode(PARAGRAPH)
        assert t.encode("x<EOS>", allow_special=True) == tok.encode("x<EOS>", allow_special=True)
        assert t.to_dict() == tok.to_dict()
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves no temp file


def test_ranks_form_round_trip(tok):
    d = tok.to_dict()
    del d["merges"]
    d["ranks"] = [b64(t) for t in tok.tokens]
    assert from_dict(d).encode(PARAGRAPH) == tok.encode(PARAGRAPH)


@pytest.mark.parametrize("content, match", [
    ('{"type": "bpe", "merges": [', "not valid JSON"),
    ('{"type": "char", "chars": []}', "does not hold a BPE tokenizer"),
    ('[1, 2]', "does not hold a BPE tokenizer"),
    ('{"type": "bpe", "specials": {}}', "damaged"),
])
def test_damaged_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=match):
        BPETokenizer.load(path)


def test_damaged_merges_and_missing_file(tok, tmp_path):
    d = tok.to_dict()
    d["merges"][0] = ["zz", "q"]  # a merge of tokens that do not exist yet
    with pytest.raises(UsageError, match="damaged"):
        from_dict(d)
    with pytest.raises(UsageError, match="cannot read tokenizer file"):
        BPETokenizer.load(tmp_path / "missing.json")


# ---- user errors ----------------------------------------------------------------------------------

def test_vocab_too_small():
    with pytest.raises(UsageError, match="at least 260"):
        train_bpe(PARAGRAPH, 259, progress=False)
    assert train_bpe("", 260, progress=False).vocab_size == 260  # zero merges is fine


def test_corpus_too_small():
    with pytest.raises(UsageError, match=r"only 2 could be learned.*--vocab-size 262"):
        train_bpe("abc", 1000, progress=False)


def test_patterns():
    with pytest.raises(UsageError, match="unknown BPE pattern name 'gpt4'"):
        train_bpe(PARAGRAPH, 300, pattern="gpt4", progress=False)
    with pytest.raises(UsageError, match="not a valid regex"):
        train_bpe(PARAGRAPH, 300, pattern="(unclosed", progress=False)
    t = train_bpe(PARAGRAPH, 300, pattern=r"\w+|\s+|[^\w\s]+", progress=False)
    assert t.pattern_name is None and t.decode(t.encode(PARAGRAPH)) == PARAGRAPH
    assert train_bpe(PARAGRAPH, 300, pattern="cl100k", progress=False).pattern_name == "cl100k"


def test_gpt2_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TINYLM_GPT2_RANKS", raising=False)
    with pytest.raises(UsageError, match="TINYLM_GPT2_RANKS"):
        load_gpt2(allow_download=False)
    monkeypatch.setenv("TINYLM_GPT2_RANKS", str(tmp_path / "nope.tiktoken"))
    with pytest.raises(UsageError, match="cannot read rank file"):
        load_gpt2()


def test_gpt2_from_local_rank_file(tmp_path):
    # a stand-in table with GPT-2's shape: 256 bytes + 50000 two-byte tokens
    tokens = [bytes([i]) for i in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)][:50000]
    path = tmp_path / "r50k_base.tiktoken"
    path.write_text("".join(f"{b64(t)} {r}\n" for r, t in enumerate(tokens)))
    t = load_gpt2(rank_file=path)
    assert (t.kind, t.vocab_size, t.eos_id) == ("gpt2", 50257, 50256)
    assert t.encode("hi<|endoftext|>", allow_special=True)[-1] == 50256
    again = from_dict(t.to_dict())  # self-contained: no rank file needed to reload
    assert again.kind == "gpt2" and again.encode("hello") == t.encode("hello")


def test_damaged_rank_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(UsageError, match="line 2 is not `base64 rank`"):
        BPETokenizer.from_tiktoken_file(path)
    path.write_text("IQ== 0\nIg== 1\n")  # readable, but lacks most single bytes
    with pytest.raises(UsageError, match="lacks 254 of the 256 single bytes"):
        BPETokenizer.from_tiktoken_file(path)


def test_pure_python_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` now fails
    t = train_bpe(PARAGRAPH, 300, progress=False)
    assert t.encode(PARAGRAPH) == t.encode_reference(PARAGRAPH) and t._fast is False
