"""Data at scale: BPE training and `tinylm eval` stream the text file instead of reading it whole.

Streamed chunk counts and merges must equal the whole-text ones (`train_bpe(read_text(path))`)
for any block size, and `tinylm eval` must give the loss the old whole-text computation gave,
with characters a char model never saw counted as <UNK>. The CLI paths are run in-process with
`read_text` made to fail, so a regression to reading the whole file cannot pass unnoticed."""

from __future__ import annotations

import io
import random
import sys

import numpy as np
import pytest
import torch

from conftest import make_model, make_text
from tinylm.util.log import ByteBar
from tinylm import cli
from tinylm.data import batches as tinylm_data
from tinylm.data.batches import eval_windows, read_text
from tinylm.data import tokenfile as tf
from tinylm.model.files import load_model, save_model
from tinylm.util.errors import UsageError
from tinylm.data.tokenfile import count_file_words, scan_text, token_file, train_bpe_file
from tinylm.tokenizers import CharTokenizer
from tinylm.tokenizers.bpe import BPETokenizer, train_bpe
from tinylm.tokenizers.bpe_train import count_words
from tinylm.tokenizers.patterns import resolve_pattern
from tinylm.train.trainer import evaluate

CPU = torch.device("cpu")
CUSTOM = r"\w+|\s+|[^\w\s]+"  # a regex of the user's own: no cut is known to be safe for it
TRAPS = ["\r\n", "\r\n\r\n", "  \n", "\n\n", "\t", "   ", "don't ", "IT'S\n", "3.14159 ", "été ", "中文\n", "😀",
         "\u00a0", "\u2028", "!!\n", "\r", "x\n\ty", "naïve—", "Ωμέγα ", "a.\nb", " \r\n "]


def corpus(n: int, seed: int = 0, newlines: bool = True) -> str:
    """Pseudo-English with multi-byte characters, CRLF and whitespace runs sprinkled in; with
    newlines=False not a single \\r or \\n (one endless line)."""
    rng = random.Random(seed)
    words = make_text(n, seed).split(" ")
    text = " ".join(w + rng.choice(TRAPS) if rng.random() < 0.2 else w for w in words)
    return text if newlines else text.replace("\r", " ").replace("\n", " ")


TEXTS = {"lines": corpus(12_000, 1), "one line": corpus(12_000, 2, newlines=False),
         "no safe cut": "中文字符😀" * 600}  # no newline and no ASCII "a b": counted whole, still equal


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))


def write(path, text: str):
    path.write_bytes(text.encode("utf-8"))  # bytes as given: CRLF stays CRLF
    return path


def forbid_read_text(monkeypatch):
    """Make every way to the whole-file reader fail loudly."""
    def whole_file(*args, **kwargs):
        raise AssertionError("read_text called: the file was read whole")

    monkeypatch.setattr(tinylm_data, "read_text", whole_file)
    monkeypatch.setattr("tinylm.read_text", whole_file)


# ---------------------------------------------------------------- streamed counts == whole-text counts

@pytest.mark.parametrize("block_bytes", [1, 3, 64, 1000, tf.BLOCK_BYTES])
@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", CUSTOM])
@pytest.mark.parametrize("kind", TEXTS)
def test_streamed_counts_equal_whole_text_counts(tmp_path, monkeypatch, kind, pattern, block_bytes):
    text = TEXTS[kind]
    monkeypatch.setattr(tf, "BLOCK_BYTES", block_bytes)  # characters split across blocks too
    got = count_file_words(write(tmp_path / "t.txt", text), pattern, progress=False)
    want = count_words(text, resolve_pattern(pattern)[1])
    assert list(got.items()) == list(want.items())  # same chunks, counts and first-seen order


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
@pytest.mark.parametrize("kind", ["lines", "one line"])
def test_streamed_pieces_are_small_and_join_back(tmp_path, kind, pattern):
    """The counts above would also match if nothing were ever cut; show that blocks are cut."""
    text = TEXTS[kind]
    reader = tf._TextReader(write(tmp_path / "t.txt", text), block_bytes=64)
    pieces = list(tf._safe_pieces(reader, tf._cut_rule(pattern), ByteBar("", 1, False)))
    assert "".join(pieces) == text
    assert len(pieces) > len(text.encode()) // 200 and max(map(len, pieces)) < 400


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_streamed_bpe_equals_whole_text_bpe(tmp_path, monkeypatch, pattern):
    text = TEXTS["lines"] + TEXTS["one line"]
    monkeypatch.setattr(tf, "BLOCK_BYTES", 64)
    got = train_bpe_file(write(tmp_path / "t.txt", text), 420, pattern=pattern, progress=False)
    want = train_bpe(text, 420, pattern=pattern, progress=False)
    assert got.merges == want.merges and got.to_dict() == want.to_dict()
    assert got.encode(text) == want.encode(text)


def test_counting_shows_a_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(tf, "BLOCK_BYTES", 1000)
    p = write(tmp_path / "t.txt", TEXTS["lines"])
    count_file_words(p, "gpt2", progress=True)
    shown = sys.stderr.getvalue()
    assert "Counting BPE chunks in t.txt [" in shown and shown.endswith("\n")
    monkeypatch.setattr(sys, "stderr", Terminal())
    count_file_words(p, "gpt2", progress=False)
    assert sys.stderr.getvalue() == ""


# ---------------------------------------------------------------- errors, worded as before

@pytest.mark.parametrize("content", [None, b"", b"caf\xe9 ol\xe9\n", b"ab\x00cd"])
def test_bad_files_fail_as_read_text_does(tmp_path, content):
    p = tmp_path / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(UsageError) as whole:
        read_text(p)
    with pytest.raises(UsageError) as streamed:
        train_bpe_file(p, 300, progress=False)
    assert str(streamed.value) == str(whole.value)


def test_bad_vocab_size_fails_before_the_file_is_read(tmp_path, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read before the arguments were checked")

    monkeypatch.setattr(tf, "_TextReader", no_reading)
    with pytest.raises(UsageError, match="--vocab-size 10 is too small"):
        train_bpe_file(write(tmp_path / "t.txt", "some text\n"), 10)


def test_a_file_that_changes_after_the_scan_is_refused(tmp_path):
    p = write(tmp_path / "t.txt", "some text\nfor a test\n")
    info = scan_text(p)
    write(p, "some other text\nfor a test\n")
    with pytest.raises(UsageError, match="changed while it was being read"):
        count_file_words(p, "gpt2", progress=False, info=info)


# ---------------------------------------------------------------- the CLI never reads the text whole

def streamed_corpus(tmp_path, monkeypatch):
    """A corpus file read in 256-byte blocks with read_text forbidden -> (path, the BPE trained in memory)."""
    text = TEXTS["lines"]
    want = train_bpe(text, 300, progress=False)
    p = write(tmp_path / "corpus.txt", text)
    monkeypatch.setattr(tf, "BLOCK_BYTES", 256)
    forbid_read_text(monkeypatch)
    return p, want


def test_tokenizer_train_command_streams(tmp_path, monkeypatch):
    p, want = streamed_corpus(tmp_path, monkeypatch)
    assert cli.main(["tokenizer", "train", "-d", str(p), "--vocab-size", "300", "-o", str(tmp_path / "tok.json")]) == 0
    assert BPETokenizer.load(tmp_path / "tok.json").to_dict() == want.to_dict()


def test_train_with_bpe_streams(tmp_path, monkeypatch):
    p, want = streamed_corpus(tmp_path, monkeypatch)
    out = tmp_path / "m.model"
    args = ["train", "-d", str(p), "-o", str(out), "--tokenizer", "bpe", "--vocab-size", "300", "--layers", "1",
            "--embd", "16", "--heads", "2", "--context", "16", "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    assert cli.main(args) == 0
    assert load_model(out).tokenizer.to_dict() == want.to_dict()


# ---------------------------------------------------------------- tinylm eval over the token file

def whole_text_loss(model, ids: torch.Tensor, T: int, B: int) -> float:
    """The old `tinylm eval`: every target in memory at once, padded windows, batch by batch."""
    n = len(ids) - 1
    W = (n + T - 1) // T
    W_padded = (W + B - 1) // B * B
    x = torch.zeros(W_padded * T, dtype=torch.long)
    y = torch.full((W_padded * T,), -1, dtype=torch.long)
    x[:n], y[:n] = ids[:-1], ids[1:]
    x, y = x.view(-1, B, T), y.view(-1, B, T)  # (batches, B, T)
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for xb, yb in zip(x, y):
            _, loss = model.eval()(xb, yb)
            k = int((yb != -1).sum())
            total += loss.double() * k
            count += k
    return float(total) / count


def eval_cli(capsys, model_path, data_path, batch_size: int) -> dict:
    assert cli.main(["eval", "-m", str(model_path), "-d", str(data_path), "--batch-size", str(batch_size),
                     "--device", "cpu"]) == 0
    return dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())


@pytest.mark.parametrize("n, T, B", [(2, 16, 4), (17, 16, 4), (100, 16, 3), (161, 16, 16), (1000, 7, 5)])
def test_eval_windows_from_a_memmap_equal_those_from_a_tensor(tmp_path, n, T, B):
    ids = np.arange(100, 100 + n, dtype=np.uint16)
    ids.tofile(tmp_path / "ids.bin")
    mm = np.memmap(tmp_path / "ids.bin", dtype=np.uint16, mode="r")
    got, want = list(eval_windows(mm, T, B)), list(eval_windows(torch.from_numpy(ids.astype(np.int64)), T, B))
    assert len(got) == len(want) == -(-(n - 1) // (T * B))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want))
    assert got[0][0].dtype == torch.long


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_eval_equals_the_whole_text_computation(tmp_path, monkeypatch, capsys, kind):
    text = TEXTS["lines"][:5000]
    tok = CharTokenizer.train(text) if kind == "char" else train_bpe(text, 300, progress=False)
    model = make_model(seed=3, vocab_size=tok.vocab_size)
    save_model(tmp_path / "m.model", model, tok, {"steps": 0})
    p = write(tmp_path / "held_out.txt", text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    want = whole_text_loss(model, ids, 16, 5)
    monkeypatch.setattr(tf, "BLOCK_BYTES", 300)
    forbid_read_text(monkeypatch)
    vals = eval_cli(capsys, tmp_path / "m.model", p, 5)
    assert int(vals["tokens"]) == len(ids) - 1 and vals["loss"] == f"{want:.4f}"
    assert evaluate(model, token_file(p, tok, progress=False), 16, 5, CPU) == want  # exactly, not approximately


def test_eval_maps_unknown_characters_to_unk(tmp_path, monkeypatch, capsys):
    tok = CharTokenizer.train(TEXTS["lines"][:3000])
    model = make_model(seed=4, vocab_size=tok.vocab_size)
    save_model(tmp_path / "m.model", model, tok, {"steps": 0})
    text = TEXTS["lines"][3000:6000] + " €uro ☃ " + TEXTS["lines"][:500]
    assert tok.unknown_chars(text)
    p = write(tmp_path / "new.txt", text)
    ids = torch.tensor(tok.encode(text, unknown="replace"), dtype=torch.long)
    want = whole_text_loss(model, ids, 16, 4)
    monkeypatch.setattr(tf, "BLOCK_BYTES", 100)
    vals = eval_cli(capsys, tmp_path / "m.model", p, 4)
    assert int(vals["tokens"]) == len(ids) - 1 and vals["loss"] == f"{want:.4f}"
    replaced = token_file(p, tok, progress=False, unknown="replace")
    assert replaced.tolist() == ids.tolist()
    with pytest.raises(UsageError, match="vocabulary lacks"):  # training still refuses: its own cache entry
        token_file(p, tok, progress=False)


def test_eval_of_text_the_model_knows_shares_the_training_cache(tmp_path, capsys):
    text = TEXTS["lines"][:2000]
    tok = CharTokenizer.train(text)
    save_model(tmp_path / "m.model", make_model(seed=5, vocab_size=tok.vocab_size), tok, {"steps": 0})
    p = write(tmp_path / "t.txt", text)
    first = token_file(p, tok, progress=False)
    eval_cli(capsys, tmp_path / "m.model", p, 4)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.bin"))) == 1
    assert token_file(p, tok, progress=False, unknown="replace").filename == first.filename
