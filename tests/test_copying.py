"""The copying measure (report/copying.py): the hashed windows agree with Python slicing, the
report agrees with a brute-force reference on small texts (corpus streamed in tiny blocks, so
n-grams across block boundaries count), a planted verbatim span is found whole, and text that is
not in the corpus reports ~0; the CLI end to end."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import make_text
from tinylm.report import copying
from tinylm.report.copying import code_values, copying_report, window_hashes


def brute(texts: list[str], corpus: str, ns=(8, 16, 32)) -> tuple[dict, int]:
    """Reference: fractions by Python `in` on every window, longest span by trying every one."""
    fractions = {}
    for n in ns:
        wins = [t[i:i + n] for t in texts for i in range(len(t) - n + 1)]
        fractions[n] = sum(w in corpus for w in wins) / len(wins) if wins else None
    longest = 0
    for t in texts:
        for i in range(len(t)):
            while i + longest < len(t) and t[i:i + longest + 1] in corpus:
                longest += 1
    return fractions, longest


def test_window_hashes_equal_for_equal_strings_and_match_every_length():
    rng = random.Random(0)
    text = "".join(rng.choice("abcé€\n") for _ in range(300))
    v = code_values(text)
    for n in (1, 2, 3, 5, 8, 13, 16, 31, 32, 100, 300):
        h = window_hashes(v, n)
        assert len(h) == len(text) - n + 1
        for i in rng.sample(range(len(h)), min(20, len(h))):
            assert h[i] == window_hashes(code_values(text[i:i + n]), n)[0]  # the same string, hashed alone
        by_string = {}
        for i, x in enumerate(h.tolist()):  # equal hashes <=> equal windows (no collision on this text)
            by_string.setdefault(text[i:i + n], set()).add(x)
        assert all(len(s) == 1 for s in by_string.values())
        assert len({next(iter(s)) for s in by_string.values()}) == len(by_string)
    assert len(window_hashes(v, 301)) == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_report_equals_brute_force_across_block_boundaries(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(copying, "BLOCK_BYTES", 37)  # many blocks: windows straddle their joins
    rng = random.Random(seed)
    corpus = make_text(3000, seed=seed) + "ünïcødé text\n"
    texts = []
    for _ in range(4):  # pieces of the corpus glued to invented text: partial copying
        a = rng.randrange(0, len(corpus) - 80)
        texts.append(corpus[a:a + rng.randint(5, 70)] + "zq" + make_text(60, seed=rng.randrange(99)).upper())
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    rep = copying_report(texts, path)
    want_fractions, want_longest = brute(texts, corpus)
    assert rep.longest == want_longest
    assert rep.longest_text in corpus and len(rep.longest_text) == want_longest
    assert rep.longest_text in texts[rep.longest_sample]
    for n, frac in want_fractions.items():
        assert rep.fractions[n] == pytest.approx(frac)


def test_a_planted_span_is_found_whole_and_foreign_text_is_about_zero(tmp_path):
    corpus = make_text(20000, seed=7)
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ,.\n"))
    foreign = ["".join(rng.choice(alphabet, 400)) for _ in range(3)]  # random letters: not in the corpus
    rep = copying_report(foreign, path)
    assert rep.fractions[8] < 0.01 and rep.fractions[16] == 0 and rep.fractions[32] == 0
    assert rep.longest < 8

    planted = corpus[5000:5250]  # 250 characters copied verbatim inside random text
    texts = [foreign[0][:100] + "#" + planted + "#" + foreign[1][:100], foreign[2]]
    rep = copying_report(texts, path)
    assert rep.longest == 250 and rep.longest_text == planted and rep.longest_sample == 0
    copied32 = (250 - 32 + 1) / sum(len(t) - 32 + 1 for t in texts)  # the planted span's 32-grams, and no others
    assert rep.fractions[32] == pytest.approx(copied32, abs=0.01)
    assert rep.passes <= 6


def test_eval_copying_cli(tmp_path, model_file, corpus_text, capsys):
    from tinylm.cli import main

    (tmp_path / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    rc = main(["eval", "-m", str(model_file), "-d", str(tmp_path / "corpus.txt"), "--copying", "--samples", "2",
               "--length", "40", "--seed", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 sample(s) of 40 tokens (seed 3" in out
    assert "longest copied span:" in out
    for n in (8, 16, 32):
        assert f"{n}-character n-grams found verbatim:" in out
