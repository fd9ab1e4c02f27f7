"""Data: reading a user's text file (every bad file -> a UsageError saying what is wrong), the
train/val split, training batches and evaluation windows."""

from __future__ import annotations

import os

import pytest
import torch

from tinylm.data.batches import ChunkBatches, eval_windows, read_text, split_tokens
from tinylm.util.errors import UsageError


# ---------------------------------------------------------------- ChunkBatches

def stream(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.long)  # token value = its position, so windows are checkable


@pytest.mark.parametrize("n, T, B", [(1000, 16, 8), (1000, 16, 100), (17, 16, 4), (513, 8, 3)])
def test_chunk_batches_shapes_shift_and_bounds(n, T, B):
    cb = ChunkBatches(stream(n), T, B, seed=0)
    n_chunks = (n - 1) // T
    assert cb.num_chunks == n_chunks
    batches = list(cb.epoch(0))
    assert len(batches) == cb.batches_per_epoch == max(1, n_chunks // B)
    rows = min(B, n_chunks)
    starts = []
    for x, y in batches:
        assert x.shape == y.shape == (rows, T) and x.dtype == torch.long
        assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one...
        assert torch.equal(y, x + 1)  # ...and each row is a contiguous piece of the stream
        assert int(x.min()) >= 0 and int(y.max()) <= n - 1
        starts += x[:, 0].tolist()
    # non-overlapping windows at one common offset, none repeated within the epoch
    assert len(set(starts)) == len(starts)
    assert len({s % T for s in starts}) == 1


def test_chunk_batches_cover_all_chunks_when_batch_divides():
    cb = ChunkBatches(stream(16 * 12 + 1), 16, 4, seed=1)  # no slack: offset must be 0
    starts = sorted(s for x, _ in cb.epoch(3) for s in x[:, 0].tolist())
    assert starts == [16 * i for i in range(12)]


def test_chunk_batches_deterministic_per_seed_and_epoch():
    toks = stream(2000)
    a = [x for x, _ in ChunkBatches(toks, 16, 8, seed=5).epoch(2)]
    b = [x for x, _ in ChunkBatches(toks, 16, 8, seed=5).epoch(2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == len(b)
    other_epoch = [x for x, _ in ChunkBatches(toks, 16, 8, seed=5).epoch(3)]
    other_seed = [x for x, _ in ChunkBatches(toks, 16, 8, seed=6).epoch(2)]
    assert not all(torch.equal(p, q) for p, q in zip(a, other_epoch))
    assert not all(torch.equal(p, q) for p, q in zip(a, other_seed))


def test_chunk_batches_epochs_cut_at_different_offsets():
    cb = ChunkBatches(stream(2000), 16, 8, seed=0)
    offsets = {next(iter(cb.epoch(e)))[0][0, 0].item() % 16 for e in range(20)}
    assert len(offsets) > 1


def test_chunk_batches_skip_resumes_mid_epoch():
    cb = ChunkBatches(stream(2000), 16, 8, seed=0)
    full = list(cb.epoch(1))
    rest = list(cb.epoch(1, skip=3))
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], rest))


# ---------------------------------------------------------------- eval_windows

@pytest.mark.parametrize("n, T, B", [(2, 16, 4), (17, 16, 4), (18, 16, 4), (100, 16, 3), (161, 16, 16), (50, 7, 1)])
def test_eval_windows_cover_every_target_exactly_once(n, T, B):
    toks = stream(n) + 100  # ids 100.., so a padded 0 can never pass for a real input
    targets, inputs = [], []
    for x, y in eval_windows(toks, T, B):
        assert x.shape == y.shape == (B, T)
        real = y != -1
        targets += y[real].tolist()
        inputs += x[real].tolist()
        assert bool((x[~real] == 0).all())  # padding is inputs 0
    assert targets == toks[1:].tolist()  # every target once, in order
    assert inputs == toks[:-1].tolist()  # each with the token before it as input


def test_eval_windows_padding_sits_only_after_the_real_tokens():
    xs = list(eval_windows(stream(20) + 1, 8, 4))
    assert len(xs) == 1
    y = xs[0][1]
    flat = y.flatten()
    n_real = int((flat != -1).sum())
    assert n_real == 19 and bool((flat[:19] != -1).all()) and bool((flat[19:] == -1).all())


# ---------------------------------------------------------------- split_tokens

def test_split_sizes():
    s = split_tokens(list(range(1000)), 0.1, 16)
    assert len(s.train) == 900 and len(s.val) == 100
    assert s.train.tolist() == list(range(900)) and s.val.tolist() == list(range(900, 1000))
    assert s.train.dtype == torch.long
    s = split_tokens(list(range(1000)), 0.0, 16)
    assert len(s.train) == 1000 and len(s.val) == 0


def test_split_exactly_one_window_is_enough():
    s = split_tokens(list(range(17)), 0.0, 16)
    assert len(s.train) == 17


def test_split_too_short_for_one_window():
    with pytest.raises(UsageError, match=r"context \+ 1 = 17.*--context"):
        split_tokens(list(range(16)), 0.0, 16, source="dataset x.txt")
    with pytest.raises(UsageError, match="dataset x.txt has 17 tokens, 16 for training"):
        split_tokens(list(range(17)), 0.1, 16, source="dataset x.txt")  # one token goes to validation


def test_split_too_few_validation_tokens():
    with pytest.raises(UsageError, match="--val-fraction"):
        split_tokens(list(range(30)), 0.05, 16)  # 1 validation token


# ---------------------------------------------------------------- read_text

def test_read_text_reads_utf8(tmp_path):
    p = tmp_path / "ok.txt"
    p.write_text("Zażółć gęślą jaźń 😀\n", encoding="utf-8")
    assert read_text(p) == "Zażółć gęślą jaźń 😀\n"


def bad_file(tmp_path, kind: str):
    p = tmp_path / "data.txt"
    if kind == "missing":
        return tmp_path / "nope.txt"
    if kind == "directory":
        p = tmp_path / "folder"
        p.mkdir()
        return p
    data = {"empty": b"", "whitespace": b"  \n\t\n", "binary": b"PK\x03\x04\x00\x00\x14\x00" + bytes(range(256)),
            "latin2": "Zażółć gęślą jaźń\n".encode("iso-8859-2")}[kind]
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("kind, words", [
    ("missing", ["does not exist", "-d/--dataset"]),
    ("directory", ["is a directory", "text file"]),
    ("empty", ["is empty"]),
    ("whitespace", ["is empty"]),
    ("binary", ["binary", "NUL"]),
    ("latin2", ["not UTF-8", "0xbf", "offset 2", "iconv"]),
])
def test_read_text_errors(tmp_path, kind, words):
    p = bad_file(tmp_path, kind)
    with pytest.raises(UsageError) as e:
        read_text(p)
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg
    assert "\n" not in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_read_text_unreadable(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("x")
    p.chmod(0)
    with pytest.raises(UsageError, match="permission"):
        read_text(p)
