"""The model file: save -> load gives the same model; damaged or foreign files are UsageErrors;
saving is atomic and refuses non-finite weights."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

import tinylm.model.files as ckpt
import tinylm.util.files as files_mod
from conftest import make_model
from tinylm.model.files import FORMAT, load_model, read_model_file, save_model
from tinylm.util.errors import UsageError
from tinylm.generate.engine import SamplingConfig, generate
from tinylm.tokenizers import CharTokenizer

TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")


@pytest.mark.parametrize("kw", [
    dict(), dict(tie_weights=False), dict(positions="rope", activation="swiglu", qk_norm=True, logit_softcap=3.0),
    dict(positions="sinusoidal", bias=False, activation="relu2", d_ff=40),
], ids=["default", "untied", "rope-swiglu", "sinusoidal-nobias"])
def test_save_load_gives_identical_logits_and_greedy_output(tmp_path, kw):
    model = make_model(seed=2, vocab_size=TOK.vocab_size, **kw)
    path = tmp_path / "m.model"
    save_model(path, model, TOK, {"steps": 7, "note": "héllo"})
    loaded = load_model(path)
    assert loaded.model.cfg == model.cfg
    assert loaded.meta == {"steps": 7, "note": "héllo"}
    assert loaded.tokenizer.to_dict() == TOK.to_dict()
    idx = torch.randint(0, TOK.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(idx)[0], model(idx)[0])
    cfg = SamplingConfig(max_new_tokens=30, temperature=0.0)
    assert torch.equal(generate(loaded.model, idx[:1, :3], cfg, TOK.vocab_size), generate(model, idx[:1, :3], cfg, TOK.vocab_size))
    if model.cfg.tie_weights:
        assert loaded.model.lm_head.weight is loaded.model.wte.weight


def test_file_is_safetensors_with_tinylm_metadata(tmp_path):
    model = make_model(vocab_size=TOK.vocab_size)
    path = tmp_path / "m.model"
    save_model(path, model, TOK)
    meta, tensors = read_model_file(path)
    assert meta["format"] == FORMAT
    assert json.loads(meta["model_config"]) == model.cfg.to_dict()
    assert json.loads(meta["tokenizer"])["type"] == "char"
    assert "lm_head.weight" not in tensors  # tied: stored once
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_saving_a_bf16_model_stores_fp32(tmp_path):
    model = make_model(vocab_size=TOK.vocab_size).to(torch.bfloat16)
    save_model(tmp_path / "m.model", model, TOK)
    loaded = load_model(tmp_path / "m.model")
    assert loaded.model.wte.weight.dtype == torch.float32
    assert torch.equal(loaded.model.wte.weight, model.wte.weight.float())


# ---------------------------------------------------------------- bad files

@pytest.fixture
def good_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.model"
    save_model(path, make_model(vocab_size=TOK.vocab_size), TOK)
    return path.read_bytes()


def header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


@pytest.mark.parametrize("where", ["4 bytes", "inside header", "just after header", "half", "one byte short"])
def test_truncated_file_is_a_usage_error(tmp_path, good_bytes, where):
    n = header_len(good_bytes)
    cut = {"4 bytes": 4, "inside header": 8 + n // 2, "just after header": 8 + n + 10, "half": len(good_bytes) // 2,
           "one byte short": len(good_bytes) - 1}[where]
    p = tmp_path / "cut.model"
    p.write_bytes(good_bytes[:cut])
    with pytest.raises(UsageError, match="not a usable tinylm model file"):
        load_model(p)


def foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(p), metadata={"format": "pt"})
    return p


def bad_model(tmp_path, kind: str):
    p = tmp_path / "bad.model"
    if kind == "random bytes":
        p.write_bytes(os.urandom(4096))
    elif kind == "random bytes, small header length":
        p.write_bytes(struct.pack("<Q", 100) + os.urandom(400))
    elif kind == "text file":
        p.write_text("To be, or not to be, that is the question.\n" * 20)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "json header list":
        h = b"[1, 2, 3]"
        p.write_bytes(struct.pack("<Q", len(h)) + h)
    elif kind == "foreign safetensors":
        return foreign_safetensors(tmp_path)
    elif kind == "directory":
        p = tmp_path / "folder.model"
        p.mkdir()
    elif kind == "missing":
        p = tmp_path / "missing.model"
    return p


@pytest.mark.parametrize("kind, words", [
    ("random bytes", ["not a usable tinylm model file"]),
    ("random bytes, small header length", ["not a usable tinylm model file"]),
    ("text file", ["not a usable tinylm model file"]),
    ("empty", ["too short"]),
    ("json header list", ["not a usable tinylm model file"]),
    ("foreign safetensors", ["not a usable tinylm model file", "tinylm-model-1"]),
    ("directory", ["is a directory"]),
    ("missing", ["does not exist"]),
])
def test_not_a_model_is_a_usage_error(tmp_path, kind, words):
    p = bad_model(tmp_path, kind)
    with pytest.raises(UsageError) as e:
        load_model(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    for w in words:
        assert w in msg


def rewrite_metadata(data: bytes, **changes) -> bytes:
    """The same model file with some of its string metadata replaced (tensors untouched)."""
    n = header_len(data)
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + data[8 + n:]


@pytest.mark.parametrize("changes", [
    dict(model_config="{not json"),
    dict(tokenizer=json.dumps({"type": "sentencepiece"})),
    dict(model_config=json.dumps({"vocab_size": 30, "n_embd": 48, "n_head": 2, "n_layer": 2, "context_size": 16})),
    dict(model_config=json.dumps({"vocab_size": 30, "n_embd": 32, "n_head": 2, "n_layer": 3, "context_size": 16})),
], ids=["bad-json", "unknown-tokenizer", "config-wider-than-tensors", "config-deeper-than-tensors"])
def test_damaged_metadata_is_a_usage_error(tmp_path, good_bytes, changes):
    p = tmp_path / "damaged.model"
    p.write_bytes(rewrite_metadata(good_bytes, **changes))
    with pytest.raises(UsageError):
        load_model(p)


def test_metadata_of_the_wrong_json_type_is_a_usage_error(tmp_path, good_bytes):
    n = header_len(good_bytes)
    header = json.loads(good_bytes[8:8 + n])
    header["__metadata__"] = ["format", FORMAT]
    new = json.dumps(header).encode()
    p = tmp_path / "damaged.model"
    p.write_bytes(struct.pack("<Q", len(new)) + new + good_bytes[8 + n:])
    with pytest.raises(UsageError):
        load_model(p)


# ---------------------------------------------------------------- atomic save

class FailingFile:
    """Wraps a real file; `write` puts half the data on disk and then fails like a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.model"
    old = make_model(seed=1, vocab_size=TOK.vocab_size)
    save_model(path, old, TOK, {"v": 1})
    before = path.read_bytes()
    real_open = open
    opened = []

    def failing_open(file, mode="r", *a, **kw):
        opened.append(str(file))
        return FailingFile(real_open(file, mode, *a, **kw))

    monkeypatch.setattr(files_mod, "open", failing_open, raising=False)  # the atomic writer's module
    with pytest.raises(OSError, match="No space"):
        save_model(path, make_model(seed=2, vocab_size=TOK.vocab_size), TOK, {"v": 2})
    monkeypatch.undo()
    assert opened and opened[0] != str(path)  # it wrote to a temporary file, not over the old one
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.model"]  # no temp file left behind
    assert load_model(path).meta == {"v": 1}


def test_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.model"

    def boom(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError):
        save_model(path, make_model(vocab_size=TOK.vocab_size), TOK)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_to_save_non_finite_weights(tmp_path, bad):
    path = tmp_path / "m.model"
    save_model(path, make_model(vocab_size=TOK.vocab_size), TOK, {"v": 1})
    before = path.read_bytes()
    model = make_model(vocab_size=TOK.vocab_size)
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight[0, 0] = bad
    with pytest.raises(RuntimeError, match="NaN/inf.*blocks.1.mlp.fc.weight"):
        save_model(path, model, TOK)
    assert path.read_bytes() == before
    with pytest.raises(RuntimeError):
        save_model(tmp_path / "new.model", model, TOK)
    assert not (tmp_path / "new.model").exists()
