"""Token files: streaming scan and tokenization must equal the in-memory path (read_text +
tokenizer.encode) id for id and error for error; cached files are reused only when valid; the
memmap split feeds ChunkBatches, eval_windows and Trainer exactly like the int64 tensors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random

import numpy as np
import pytest
import torch

from conftest import make_text, tiny_config
from tinylm.util.log import ByteBar
from tinylm.data import tokenfile as tf
from tinylm.data import tokenstream as ts
from tinylm.data.batches import ChunkBatches, eval_windows, read_text, split_tokens
from tinylm.util.errors import UsageError
from tinylm.model.gpt import GPT
from tinylm.data.tokenfile import id_dtype, scan_text, token_file
from tinylm.data.tokenstream import TokenWindows, gather_batch, split_memmap
from tinylm.tokenizers import CharTokenizer, Tokenizer
from tinylm.tokenizers.bpe import train_bpe
from tinylm.train.trainer import Trainer, TrainConfig, seed_everything

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TRAPS = ["\r\n", "  \n", "\n\n\n", "\t", "   ", " \n x", "don't ", "IT'S\n", "3.14159 ", "été ", "中文\n", "😀", "\u00a0",
         "\u2028", "!!\n", "\r", "\n ", "x\n\ty", "a.\nb", "(\n"]  # whitespace and pre-split edge cases


def tricky_text(n: int, seed: int = 0) -> str:
    """make_text with TRAPS sprinkled in: multi-byte characters, CRLF, whitespace runs."""
    rng = random.Random(seed)
    words = make_text(n, seed).split(" ")
    return " ".join(w + rng.choice(TRAPS) if rng.random() < 0.15 else w for w in words)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokens"


@pytest.fixture(scope="module")
def bpes() -> dict:
    text = tricky_text(8000, seed=1)
    return {p: train_bpe(text, 300, pattern=p, progress=False) for p in ("gpt2", "cl100k")}


def write(path, text: str):
    path.write_bytes(text.encode("utf-8"))  # bytes as given: no newline translation
    return path


def stream_ids(path, tokenizer, block_bytes: int) -> list[int]:
    reader = tf._TextReader(path, block_bytes=block_bytes)
    return [int(i) for ids in tf._encode_blocks(reader, tokenizer, ByteBar("", 1, False)) for i in ids]


# ---------------------------------------------------------------- scan_text

@pytest.mark.parametrize("block_bytes", [1, 3, 64, tf.BLOCK_BYTES])
def test_scan_text_matches_reading_it_whole(tmp_path, block_bytes):
    text = tricky_text(3000)
    p = write(tmp_path / "t.txt", text)
    info = scan_text(p, block_bytes=block_bytes)
    assert info.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert info.nbytes == len(text.encode("utf-8")) and info.chars == set(read_text(p))


BAD_FILES = {  # name -> bytes (None: no file; "dir": a directory)
    "missing": None, "directory": "dir", "empty": b"", "blank": b" \n\t\r\n ",
    "nul": b"hello\x00world", "nul after bad byte": b"ab\xff" + b"x" * 40 + b"\x00",
    "latin-1": "caf\u00e9 ol\u00e9\n".encode("latin-1"), "bad continuation": b"abc \xe2\x82x tail",
    "truncated at end": b"abcdef \xe2\x82", "lone continuation": "\u00e9t\u00e9 ".encode() * 5 + b"\x80!",
}


@pytest.mark.parametrize("name", BAD_FILES)
@pytest.mark.parametrize("block_bytes", [1, 5, tf.BLOCK_BYTES])
def test_scan_text_errors_match_read_text(tmp_path, name, block_bytes):
    p = tmp_path / "data.txt"
    if BAD_FILES[name] == "dir":
        p.mkdir()
    elif BAD_FILES[name] is not None:
        p.write_bytes(BAD_FILES[name])
    with pytest.raises(UsageError) as whole:
        read_text(p)
    with pytest.raises(UsageError) as streamed:
        scan_text(p, block_bytes=block_bytes)
    assert str(streamed.value) == str(whole.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_scan_text_unreadable_file(tmp_path):
    p = write(tmp_path / "secret.txt", "text")
    p.chmod(0)
    with pytest.raises(UsageError) as whole:
        read_text(p)
    with pytest.raises(UsageError) as streamed:
        scan_text(p)
    assert str(streamed.value) == str(whole.value)


# ---------------------------------------------------------------- streaming = encoding the whole text

@pytest.mark.parametrize("block_bytes", [1, 7, 100, 4096])
def test_streamed_ids_equal_whole_text_ids(tmp_path, bpes, block_bytes):
    text = tricky_text(6000, seed=2)
    p = write(tmp_path / "t.txt", text)
    for tok in [CharTokenizer.train(text), *bpes.values()]:
        assert stream_ids(p, tok, block_bytes) == tok.encode(text), getattr(tok, "pattern_name", tok.kind)


def test_streamed_ids_equal_whole_text_ids_on_random_text(tmp_path, bpes):
    """Fuzz the safe-cut rule: random strings of words, whitespace kinds, punctuation and CJK."""
    alphabet = ["a", "Zq", "é", "中", "7", "'s", "'LL", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\u3000", "\x0b",
                "\x85", ".", "!?", "(", "_", "😀"]
    rng = random.Random(0)
    for trial in range(25):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(50, 1500)))
        p = write(tmp_path / f"r{trial}.txt", text)
        for tok in bpes.values():
            assert stream_ids(p, tok, rng.choice([1, 3, 16, 200])) == tok.encode(text), (tok.pattern_name, text)


def test_last_safe_cut_avoids_whitespace_that_joins_the_next_word():
    assert tf._last_safe_cut("one\ntwo\n  three", 1) == 4  # not before "  three": the run joins the word
    assert tf._last_safe_cut("x\r\ny", 1) == 0  # GPT-2 splits "\r\n" + word unlike "\r\n" at the end
    assert tf._last_safe_cut("ab cd", 1) == 2  # letter | " " letter
    assert tf._last_safe_cut("ab\n", 1) == 0  # nothing after the newline yet


# ---------------------------------------------------------------- token_file

def test_token_file_round_trips_char(tmp_path, monkeypatch, cache):
    monkeypatch.setattr(tf, "BLOCK_BYTES", 101)  # many blocks, characters split across them
    text = tricky_text(5000)
    p = write(tmp_path / "t.txt", text)
    tok = CharTokenizer(sorted(scan_text(p).chars))
    ids = token_file(p, tok, progress=False)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and not ids.flags.writeable
    assert ids.tolist() == tok.encode(text) and tok.decode(ids.tolist()) == text
    meta = json.loads(next(cache.glob("*.json")).read_text())
    assert meta["count"] == len(ids) and meta["dtype"] == "uint16" and meta["source"] == str(p.resolve())


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_token_file_round_trips_bpe(tmp_path, monkeypatch, bpes, pattern):
    monkeypatch.setattr(tf, "BLOCK_BYTES", 257)
    text = tricky_text(6000, seed=3)
    tok = bpes[pattern]
    ids = token_file(write(tmp_path / "t.txt", text), tok, progress=False)
    assert ids.tolist() == tok.encode(text) and tok.decode(ids.tolist()) == text


def test_cached_token_file_gives_the_same_ids_as_tokenizing_afresh(tmp_path, monkeypatch, bpes, cache):
    text = tricky_text(4000)
    p = write(tmp_path / "t.txt", text)
    tok = bpes["gpt2"]
    first = token_file(p, tok, progress=False)
    assert sorted(f.suffix for f in cache.iterdir()) == [".bin", ".json"]

    def no_tokenizing(*args):
        raise AssertionError("the cached file should have been used")

    with monkeypatch.context() as m:
        m.setattr(tf, "_encode_blocks", no_tokenizing)
        cached = token_file(p, tok, info=scan_text(p), progress=False)
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "fresh"))
    fresh = token_file(p, tok, progress=False)
    assert cached.filename == first.filename != fresh.filename
    assert np.array_equal(cached, fresh) and cached.tolist() == tok.encode(text)


def test_cache_key_follows_text_and_tokenizer(tmp_path, bpes, cache):
    p = write(tmp_path / "t.txt", "some text\nfor a test\n")
    a = token_file(p, bpes["gpt2"], progress=False)
    b = token_file(p, bpes["cl100k"], progress=False)
    write(p, "some text\nfor b test\n")
    c = token_file(p, bpes["gpt2"], progress=False)
    assert len({a.filename, b.filename, c.filename}) == 3 and len(list(cache.glob("*.bin"))) == 3
    assert c.tolist() == bpes["gpt2"].encode("some text\nfor b test\n")


@pytest.mark.parametrize("damage", ["truncate", "no sidecar", "bad sidecar"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, damage, cache):
    text = tricky_text(2000)
    p = write(tmp_path / "t.txt", text)
    tok = CharTokenizer.train(text)
    bin_path = token_file(p, tok, progress=False).filename
    side = cache / (os.path.basename(bin_path)[:-4] + ".json")
    if damage == "truncate":  # e.g. copied back from a full disk
        with open(bin_path, "r+b") as f:
            f.truncate(100)
    elif damage == "no sidecar":  # a crash between publishing the ids and the sidecar
        side.unlink()
    else:
        side.write_text("{not json")
    assert token_file(p, tok, progress=False).tolist() == tok.encode(text)


def test_failed_tokenization_leaves_nothing_behind(tmp_path, cache):
    p = write(tmp_path / "t.txt", "abc\n" * 100 + "xyz\n")
    tok = CharTokenizer.train("abc\n")  # lacks x, y, z: encode raises
    with pytest.raises(UsageError) as streamed:
        token_file(p, tok, progress=False)
    with pytest.raises(UsageError) as whole:
        tok.encode(read_text(p))
    assert str(streamed.value) == str(whole.value)
    assert list(cache.iterdir()) == []


class OffsetTokenizer(Tokenizer):
    """id = offset + code point: ids that use the top bits of uint16 / uint32."""

    kind = "offset"

    def __init__(self, offset: int, vocab_size: int):
        self.offset, self._vocab_size = offset, vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return {}

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return [self.offset + ord(c) for c in text]

    def decode_bytes(self, ids: list[int]) -> bytes:
        return "".join(chr(i - self.offset) for i in ids).encode("utf-8")

    def to_dict(self) -> dict:
        return {"type": self.kind, "offset": self.offset, "vocab_size": self._vocab_size}


def test_id_dtype_boundary():
    assert id_dtype(256) == id_dtype(1 << 16) == np.uint16 and id_dtype((1 << 16) + 1) == np.uint32


@pytest.mark.parametrize("offset, vocab, dtype", [(65_000, 1 << 16, np.uint16), (100_000, 200_000, np.uint32),
                                                  ((1 << 32) - 200, 1 << 32, np.uint32)])
def test_large_ids_survive_storage_and_windows(tmp_path, offset, vocab, dtype):
    text = "the quick brown fox\njumps over\n" * 20
    tok = OffsetTokenizer(offset, vocab)
    ids = token_file(write(tmp_path / "t.txt", text), tok, progress=False)
    assert ids.dtype == dtype and ids.tolist() == tok.encode(text)
    split = split_memmap(ids, 0.1, 8)
    assert split.train[:].tolist() == tok.encode(text)[:len(split.train)]  # widened without a sign flip
    x, y = gather_batch(split.train, torch.tensor([0, 5]), 8)
    assert x.dtype == torch.int64 and x.tolist() == [tok.encode(text)[s:s + 8] for s in (0, 5)]


# ---------------------------------------------------------------- split_memmap and batches

@pytest.fixture
def char_ids(tmp_path, corpus_text):
    tok = CharTokenizer.train(corpus_text)
    return token_file(write(tmp_path / "c.txt", corpus_text), tok, progress=False), tok.encode(corpus_text)


def test_split_memmap_shares_memory_and_matches_split_tokens(char_ids):
    ids, ref_ids = char_ids
    split, ref = split_memmap(ids, 0.1, 16), split_tokens(ref_ids, 0.1, 16)
    assert (len(split.train), len(split.val)) == (len(ref.train), len(ref.val))
    assert split.train.ids.data_ptr() == ids.ctypes.data  # a view of the memmap, not a copy
    assert split.val.ids.data_ptr() == ids.ctypes.data + len(ref.train) * ids.itemsize
    assert torch.equal(split.train[:], ref.train) and torch.equal(split.val[:], ref.val)
    assert split.train.to("cpu") is split.train


@pytest.mark.parametrize("n, val_fraction, context", [(10, 0.0, 16), (30, 0.5, 16), (100, 0.01, 16), (4, 0.0, 4)])
def test_split_memmap_errors_match_split_tokens(n, val_fraction, context):
    ids = np.arange(n, dtype=np.uint16)
    with pytest.raises(UsageError) as whole:
        split_tokens(torch.arange(n), val_fraction, context, source="dataset x")
    with pytest.raises(UsageError) as mapped:
        split_memmap(ids, val_fraction, context, source="dataset x")
    assert str(mapped.value) == str(whole.value)


def test_chunk_batches_and_eval_windows_same_as_in_memory(char_ids):
    ids, ref_ids = char_ids
    split, ref = split_memmap(ids, 0.1, 16), split_tokens(ref_ids, 0.1, 16)
    got = list(ChunkBatches(split.train.to("cpu"), 16, 8, seed=3).epoch(2))
    want = list(ChunkBatches(ref.train, 16, 8, seed=3).epoch(2))
    assert len(got) == len(want) and all(torch.equal(a, c) and torch.equal(b, d) and a.dtype == torch.long
                                         for (a, b), (c, d) in zip(got, want))
    got_eval, want_eval = list(eval_windows(split.val, 16, 4)), list(eval_windows(ref.val, 16, 4))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got_eval, want_eval))


def test_trainer_on_memmap_split_trains_like_in_memory(tmp_path, char_ids, corpus_text):
    ids, ref_ids = char_ids
    tok = CharTokenizer.train(corpus_text)

    def losses(split):
        cfg = TrainConfig(max_steps=8, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=4, device="cpu", log_interval=1000)
        seed_everything(0)
        model = GPT(tiny_config(vocab_size=tok.vocab_size))
        trainer = Trainer(model, tok, split, cfg, out=tmp_path / "m.model", last=tmp_path / "m.last.model", meta={})
        return [h[2] for h in trainer.run().history]

    assert losses(split_memmap(ids, 0.1, 16)) == losses(split_tokens(ref_ids, 0.1, 16))


def test_gather_batch_on_cpu():
    ids = np.arange(1000, dtype=np.uint16) + 40_000  # above int16: must come back unsigned
    x, y = gather_batch(ids, torch.tensor([0, 10, 985]), 14)
    assert x.shape == y.shape == (3, 14) and x.dtype == y.dtype == torch.int64
    assert x[:, 0].tolist() == [40_000, 40_010, 40_985] and torch.equal(y, x + 1)
    assert x.is_pinned() == torch.cuda.is_available()  # pinned only when there is a GPU to copy to
    x, _ = gather_batch(ids, torch.tensor([0]), 14, pin=False)
    assert not x.is_pinned()


@cuda
def test_gather_batch_pins_and_stream_moves_to_gpu():
    ids = np.arange(5000, dtype=np.uint16) + 40_000
    x, y = gather_batch(ids, torch.tensor([0, 7]), 32)
    assert x.is_pinned() and y.is_pinned() and x.is_contiguous()
    xg = x.to("cuda", non_blocking=True)
    assert torch.equal(xg.cpu(), x)
    on_gpu = TokenWindows(ids).to("cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.ids.dtype == torch.int16  # still 2 bytes a token
    xd, yd = gather_batch(on_gpu, torch.tensor([0, 7], device="cuda"), 32)
    assert torch.equal(xd.cpu(), x) and torch.equal(yd.cpu(), y)


@cuda
def test_stream_too_large_for_gpu_stays_on_host(monkeypatch):
    monkeypatch.setattr(ts, "DEVICE_SHARE", 0.0)
    stream = TokenWindows(np.arange(100, dtype=np.uint16))
    assert stream.to("cuda") is stream


@cuda
@pytest.mark.parametrize("share", [ts.DEVICE_SHARE, 0.0])  # the stream on the GPU / left on the host
def test_trainer_on_gpu_from_memmap(tmp_path, monkeypatch, char_ids, corpus_text, share):
    monkeypatch.setattr(ts, "DEVICE_SHARE", share)
    ids, ref_ids = char_ids
    tok = CharTokenizer.train(corpus_text)

    def losses(split):
        cfg = TrainConfig(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=3, device="cuda", dtype="fp32",
                          log_interval=1000)
        seed_everything(0)
        trainer = Trainer(GPT(tiny_config(vocab_size=tok.vocab_size)), tok, split, cfg, out=tmp_path / "m.model",
                          last=tmp_path / "m.last.model", meta={})
        if isinstance(split.train, TokenWindows):
            assert trainer.batches.tokens.device.type == ("cuda" if share else "cpu")
        return [h[2] for h in trainer.run().history]

    assert losses(split_memmap(ids, 0.1, 16)) == pytest.approx(losses(split_tokens(ref_ids, 0.1, 16)), rel=1e-5)


# ---------------------------------------------------------------- progress

class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    tty, pipe = FakeTTY(), io.StringIO()
    for stream in (tty, pipe):
        bar = ByteBar("Tokenizing t.txt", 2_000_000, stream=stream)
        bar.update(1_000_000)
        bar.close()
    assert pipe.getvalue() == ""
    assert "Tokenizing t.txt [" in tty.getvalue() and "/2.0 MB" in tty.getvalue() and tty.getvalue().endswith("MB/s\n")


def test_unwritable_cache_is_a_usage_error(tmp_path, monkeypatch):
    p = write(tmp_path / "t.txt", "some text\n")
    monkeypatch.setenv("TINYLM_CACHE", str(write(tmp_path / "a-file", "")))  # tokens/ cannot go under a file
    with pytest.raises(UsageError, match="TINYLM_CACHE=.* is a file, not a folder"):
        token_file(p, CharTokenizer.train("some text\n"), progress=False)
