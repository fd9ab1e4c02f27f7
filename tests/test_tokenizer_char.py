"""Character tokenizer: Unicode round trips, the unknown-character policy, special tokens and
serialisation."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylm.util.errors import UsageError
from tinylm.tokenizers import DEFAULT_SPECIALS, CharTokenizer, from_dict

# Valid text only: no lone surrogates (they cannot come from a UTF-8 file).
UNICODE = st.characters(blacklist_categories=("Cs",))
EXOTIC = st.sampled_from(["😀", "👍🏽", "🇫🇷", "中", "文", "字", "e\u0301", "\u0301", "\u200d", "ß", "ﬁ", "\t", "\r\n", "\x7f", "\U0010fffd"])
SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def test_specials_are_ids_0_to_3_and_chars_follow_sorted(corpus_text):
    tok = CharTokenizer.train(corpus_text)
    assert tok.special_tokens == {"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3}
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
    assert tok.itos[:4] == list(DEFAULT_SPECIALS)
    assert tok.itos[4:] == sorted(set(corpus_text))
    assert tok.vocab_size == 4 + len(set(corpus_text))
    assert tok.encode("a") == [4 + sorted(set(corpus_text)).index("a")]


def test_same_text_gives_the_same_vocabulary_whatever_the_order():
    assert CharTokenizer.train("cab").itos == CharTokenizer.train("abc").itos


@SETTINGS
@given(data=st.data())
def test_round_trip_over_the_training_alphabet(corpus_text, data):
    tok = CharTokenizer.train(corpus_text)
    text = data.draw(st.text(alphabet=sorted(set(corpus_text)), max_size=200))
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@SETTINGS
@given(pieces=st.lists(st.one_of(UNICODE, EXOTIC), min_size=1, max_size=60), data=st.data())
def test_round_trip_with_a_random_unicode_vocabulary(pieces, data):
    vocab_text = "".join(pieces)  # emoji with modifiers, flags, combining marks: several code points each
    tok = CharTokenizer.train(vocab_text)
    assert tok.vocab_size == 4 + len(set(vocab_text))
    text = data.draw(st.text(alphabet=sorted(set(vocab_text)), max_size=100))
    assert tok.decode(tok.encode(text)) == text
    # survives the model file: JSON and back
    again = from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode(text) == tok.encode(text)
    assert again.decode(tok.encode(text)) == text


def test_exotic_text_round_trips():
    text = "Hello, 世界! 😀👍🏽🇫🇷 café (e\u0301) ﬁ\tß\r\n\u200d"
    tok = CharTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text
    # a combining mark is its own token; it is not merged into the letter before it
    assert len(tok.encode("e\u0301")) == 2


def test_unknown_character_error_names_it():
    tok = CharTokenizer.train("hello world")
    with pytest.raises(UsageError) as e:
        tok.encode("hello €uro")
    msg = str(e.value)
    assert "'€'" in msg and "'u'" in msg
    assert "'r'" not in msg  # 'r' is in "world": only the unknown ones are named
    assert "--unknown replace" in msg  # says how to get past it
    assert "\n" not in msg


def test_unknown_character_error_is_the_default_and_lists_each_once():
    tok = CharTokenizer.train("ab")
    with pytest.raises(UsageError, match=r"1 character\(s\).*'z'"):
        tok.encode("zzz")


def test_unknown_character_replace_maps_to_unk_id_1():
    tok = CharTokenizer.train("hello world")
    ids = tok.encode("h€llo😀", unknown="replace")
    assert ids == [tok.stoi["h"], 1, tok.stoi["l"], tok.stoi["l"], tok.stoi["o"], 1]
    assert tok.decode(ids) == "h\ufffdllo\ufffd"


def test_special_strings_are_plain_text_unless_allowed():
    tok = CharTokenizer.train("<>EOSBPADUNK ab")
    plain = tok.encode("a<EOS>b")
    assert plain == [tok.stoi[c] for c in "a<EOS>b"]
    assert tok.decode(plain) == "a<EOS>b"
    special = tok.encode("a<EOS>b<BOS><PAD>", allow_special=True)
    assert special == [tok.stoi["a"], 3, tok.stoi["b"], 2, 0]
    assert tok.decode(special) == "ab"  # PAD/BOS/EOS have no text form
    assert tok.encode("<UNK>", allow_special=True) == [1]


def test_allow_special_still_applies_the_unknown_policy_between_specials():
    tok = CharTokenizer.train("ab")
    with pytest.raises(UsageError, match="'z'"):
        tok.encode("a<EOS>z", allow_special=True)
    assert tok.encode("a<EOS>z", allow_special=True, unknown="replace") == [tok.stoi["a"], 3, 1]


def test_to_dict_from_dict_round_trip():
    tok = CharTokenizer.train("zyx 😀 中\n")
    d = tok.to_dict()
    assert d["type"] == "char"
    assert json.loads(json.dumps(d)) == d
    back = from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, CharTokenizer)
    assert back.itos == tok.itos and back.specials == tok.specials
    assert back.to_dict() == d


def test_from_dict_rejects_unknown_types():
    with pytest.raises(UsageError, match="unknown tokenizer type"):
        from_dict({"type": "wordpiece"})
    with pytest.raises(UsageError):
        from_dict(["not", "a", "dict"])


def test_duplicate_vocabulary_is_rejected():
    with pytest.raises(ValueError):
        CharTokenizer(["a", "a"])


def test_replace_without_an_unk_token_is_a_clear_error():
    tok = CharTokenizer(list("ab"), specials=())
    with pytest.raises(UsageError, match="no <UNK> token"):
        tok.encode("abc", unknown="replace")
    assert tok.encode("ab", unknown="replace") == [0, 1]
