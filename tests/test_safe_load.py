"""Loading never runs code from a file: model files are safetensors (a JSON header and raw
bytes), checkpoints go through torch.load(weights_only=True). A crafted pickle whose __reduce__
would create a marker file is refused with a clear UsageError, and the marker never appears;
damaged files are UsageErrors too."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from conftest import make_model
from tinylm.train import state as trainstate
from tinylm.model.files import load_model, save_model
from tinylm.util.errors import UsageError
from tinylm.tokenizers import CharTokenizer

TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")


class Hostile:
    """Unpickling this would call open(path, "w"), creating the marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def hostile_file(tmp_path, how: str):
    marker = tmp_path / "PWNED"
    payload = {"format": trainstate.FORMAT, "model": Hostile(marker)}
    p = tmp_path / f"evil-{how}.bin"
    if how == "torch.save":  # the zip format torch writes, with the payload as its data.pkl
        buf = io.BytesIO()
        torch.save(payload, buf)
        p.write_bytes(buf.getvalue())
    else:  # a bare pickle, in the oldest and newest protocols
        p.write_bytes(pickle.dumps(payload, protocol=int(how.split("-")[1])))
    return p, marker


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """The control: without the safe loader the same bytes do create the marker."""
    p, marker = hostile_file(tmp_path, "pickle-2")
    pickle.loads(p.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle-2", "pickle-5"])
def test_a_hostile_checkpoint_is_refused_without_running_it(tmp_path, how):
    p, marker = hostile_file(tmp_path, how)
    with pytest.raises(UsageError) as e:
        trainstate.load_checkpoint(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    assert "refused" in msg or "not a tinylm checkpoint" in msg
    assert not marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle-2", "pickle-5"])
def test_a_hostile_model_file_is_refused_without_running_it(tmp_path, how):
    p, marker = hostile_file(tmp_path, how)
    with pytest.raises(UsageError, match="not a usable tinylm model file"):
        load_model(p)
    assert not marker.exists()


def test_a_checkpoint_of_only_tensors_and_plain_values_loads(tmp_path):
    state = {"format": trainstate.FORMAT, "step": 3, "model": {"w": torch.ones(2)}, "optimizer": [], "loop": {}, "schedule": {},
             "result": {"history": [(1, 0.5, 2.0)]}, "rng": trainstate.rng_state(), "train_config": {}, "model_config": {},
             "tokenizer": "{}"}
    p = tmp_path / "ok.ckpt"
    torch.save(state, p)
    assert trainstate.load_checkpoint(p)["result"]["history"] == [(1, 0.5, 2.0)]


@pytest.mark.parametrize("cut", [0, 10, 0.5, -1])
def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, cut):
    buf = io.BytesIO()
    torch.save({"format": trainstate.FORMAT, "model": {"w": torch.zeros(1000)}}, buf)
    data = buf.getvalue()
    p = tmp_path / "cut.ckpt"
    p.write_bytes(data[:int(len(data) * cut) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut])
    with pytest.raises(UsageError, match=r"cut\.ckpt is damaged or not a tinylm checkpoint"):
        trainstate.load_checkpoint(p)


@pytest.mark.parametrize("keep", [8, 100, 0.5, -1])
def test_a_truncated_model_file_is_a_clear_error(tmp_path, keep):
    path = tmp_path / "m.model"
    save_model(path, make_model(vocab_size=TOK.vocab_size), TOK)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep if keep >= 0 else len(data) + keep])
    with pytest.raises(UsageError, match=r"m\.model is not a usable tinylm model file"):
        load_model(path)


def test_a_foreign_torch_file_is_not_a_checkpoint(tmp_path):
    p = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, p)  # loads safely, but is not ours
    with pytest.raises(UsageError, match="not a tinylm training checkpoint"):
        trainstate.load_checkpoint(p)
