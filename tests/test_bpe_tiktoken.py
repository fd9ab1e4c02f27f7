"""tinylm's BPE encoders against tiktoken, the reference (STYLE.md habit 10).

- cl100k: tinylm loading the shared rank file must give tiktoken's ids exactly, through both the
  pure-Python reference encoder and the fast path, on the whole tiny Shakespeare corpus and on
  adversarial strings. Skipped where ../shared is absent (a user's checkout).
- trained vocabularies: the fast path and the reference encoder agree on random text
  (hypothesis), for both named patterns and with special tokens allowed or not.
"""

from __future__ import annotations

import base64
import gzip
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.tokenizers.bpe import CL100K_SPECIALS, BPETokenizer, train_bpe
from tinylm.tokenizers.patterns import CL100K_PATTERN

tiktoken = pytest.importorskip("tiktoken")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CL100K_FILE = DATA / "cl100k_base.tiktoken.gz"
SHAKESPEARE = DATA / "tinyshakespeare.txt"

ADVERSARIAL = [
    "", " ", "  ", "\n", "\n\n\n", " \n \n", "\r\n\r\n", "a  b", "a \n b", "   leading", "trailing   ",
    "'s 'S 'll 'LL 've 're 'd 'm 'x", "don't DON'T it'S", "ſ's", "'ſ", "İstanbul ǅ ß ﬁ",
    "1 12 123 1234 12345 123456789012", "3.14159e-10", "١٢٣٤ ໑໒໓ ⅻ ½", "\t\t\tindent", "\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000",
    "日本語のテキスト、中文文本", "ภาษาไทย", "한국어 텍스트", "Ελληνικά Кириллица עברית العربية",
    "🎉👍🏽👨‍👩‍👧‍👦🇺🇸🏳️‍🌈", "e\u0301 a\u0308\u0308 \u200d\u200b\ufeff", "\x00\x01\x7f\x80", "\U0010ffff\U000e0001",
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|>", "<|fim_prefix|>x<|fim_suffix|>",
    "((((((((((", "!!!???...", "__init__", "https://example.com/a?b=c&d=e#f", "x" * 5000, " " * 5000,
    "ab" * 3000, "\n" * 1000 + "z", "\ud83d lone surrogates \udc00",
]

# Random Unicode, minus lone surrogates (not UTF-8) and code points unassigned in this Python's
# Unicode tables (Cn): the newest letters are classified differently by `regex` and tiktoken's
# Rust regex, which ship different Unicode versions (see bpe.py).
pieces = st.one_of(
    st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=16),
    st.text(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000", min_size=1, max_size=8),  # whitespace runs
    st.text("0123456789", min_size=1, max_size=12),
    st.text("aeiouAEIOU ſK's", max_size=10),
    st.sampled_from(["🎉", "👍🏽", "👨‍👩‍👧", "🇺🇸", "'s", "'LL", " 're", "\r\n", "<EOS>", "<BOS>", "<|endoftext|>", "é", "e\u0301"]),
)
texts = st.lists(pieces, max_size=12).map("".join)


def cl100k_ranks() -> dict[bytes, int]:
    with gzip.open(CL100K_FILE, "rb") as f:
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}


@pytest.fixture(scope="module")
def cl100k() -> tuple[BPETokenizer, object]:
    if not CL100K_FILE.exists():
        pytest.skip(f"{CL100K_FILE} not found (../shared is only beside CI's checkout)")
    ours = BPETokenizer.from_tiktoken_file(CL100K_FILE, specials=CL100K_SPECIALS)
    ref = tiktoken.Encoding(name="cl100k_ref", pat_str=CL100K_PATTERN, mergeable_ranks=cl100k_ranks(),
                            special_tokens=CL100K_SPECIALS)
    return ours, ref


@pytest.fixture(scope="module")
def trained() -> dict[str, BPETokenizer]:
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    else:  # made-up words, enough of them for 1000 ids
        rng = random.Random(0)
        text = " ".join("".join(rng.choice("etaoinshrdlucmTAOé日本") for _ in range(rng.randrange(1, 9))) for _ in range(30_000))
    text += "Ünïcödé wörds, 日本語のテキスト, emoji 🎉🎉 1234567 it's DON'T\r\n\t " * 50
    return {p: train_bpe(text, 1000, pattern=p, progress=False) for p in ("gpt2", "cl100k")}


def test_cl100k_matches_tiktoken_on_shakespeare(cl100k):
    ours, ref = cl100k
    if not SHAKESPEARE.exists():
        pytest.skip(f"{SHAKESPEARE} not found")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    want = ref.encode_ordinary(text)
    assert ours.encode(text) == want
    assert ours.encode_reference(text) == want
    assert ours.decode(want) == text


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_cl100k_matches_tiktoken_adversarial(cl100k, text):
    ours, ref = cl100k
    want = ref.encode_ordinary(text)
    assert ours.encode(text) == want and ours.encode_reference(text) == want
    want = ref.encode(text, allowed_special="all")
    assert ours.encode(text, allow_special=True) == want
    assert ours.encode_reference(text, allow_special=True) == want


@settings(max_examples=300, deadline=None)
@given(texts)
def test_cl100k_matches_tiktoken_random(cl100k, text):
    ours, ref = cl100k
    assert ours.encode_reference(text) == ref.encode_ordinary(text)


@pytest.mark.parametrize("text", ADVERSARIAL)
@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_trained_fast_equals_reference_adversarial(trained, pattern, text):
    tok = trained[pattern]
    assert tok.encode(text) == tok.encode_reference(text)
    assert tok.encode(text, allow_special=True) == tok.encode_reference(text, allow_special=True)


@settings(max_examples=300, deadline=None)
@given(texts, st.booleans())
def test_trained_fast_equals_reference_random(trained, text, allow_special):
    for tok in trained.values():
        assert tok.encode(text, allow_special) == tok.encode_reference(text, allow_special)
        assert tok.decode(tok.encode(text)) == text
