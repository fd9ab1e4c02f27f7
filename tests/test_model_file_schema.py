"""Crafted model files, checkpoints and Q&A files: a sound container with unsound contents is
refused with one UsageError line naming the file, the problem and the fix, before anything is
built from it (nothing huge is allocated) — never a traceback, never garbage accepted."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from conftest import make_model, make_text, run_cli
from tinylm.data.batches import split_tokens
from tinylm.generate.chat import load_qa_json
from tinylm.model.files import FORMAT, load_model, model_file_bytes
from tinylm.model.gpt import GPT, GPTConfig
from tinylm.tokenizers import CharTokenizer
from tinylm.train import state as trainstate
from tinylm.train.trainer import TrainConfig, Trainer
from tinylm.util.errors import UsageError

TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz .,\n")
MODEL = make_model(seed=1, vocab_size=TOK.vocab_size)
TENSORS = {k: v.clone() for k, v in MODEL.state_for_saving().items()}
GOOD_META = {"format": FORMAT, "model_config": json.dumps(MODEL.cfg.to_dict()),
             "tokenizer": json.dumps(TOK.to_dict()), "meta": json.dumps({"steps": 3})}


def write(tmp_path: Path, tensors=None, **metadata) -> Path:
    """A model file of TENSORS (or `tensors`) with GOOD_META, some fields replaced; a value of
    None drops the field; a dict or list is stored as its JSON text."""
    meta = dict(GOOD_META)
    for k, v in metadata.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v if isinstance(v, str) else json.dumps(v)
    p = tmp_path / "crafted.model"
    p.write_bytes(save(TENSORS if tensors is None else tensors, metadata=meta))
    return p


def config(**changes) -> dict:
    return {**MODEL.cfg.to_dict(), **changes}


def refused(p: Path, *words: str) -> str:
    """load_model(p) raises a one-line UsageError naming p and each of `words`, within a second."""
    t0 = time.perf_counter()
    with pytest.raises(UsageError) as e:
        load_model(p)
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "not a usable tinylm model file" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_the_good_file_loads(tmp_path):
    loaded = load_model(write(tmp_path))
    assert loaded.model.cfg == MODEL.cfg and loaded.meta == {"steps": 3}


@pytest.mark.parametrize("field", ["model_config", "tokenizer", "meta"])
def test_deeply_nested_json_is_refused_before_parsing(tmp_path, field):
    refused(write(tmp_path, **{field: "[" * 100_000 + "]" * 100_000}), field, "nested")


@pytest.mark.parametrize("field,value,words", [
    ("n_layer", 1.0, ["model_config.n_layer must be an integer, got 1.0"]),
    ("n_layer", [2], ["model_config.n_layer must be an integer, got a JSON array"]),
    ("n_head", True, ["model_config.n_head must be an integer, got true"]),
    ("bias", 1, ["model_config.bias must be true or false, got 1"]),
    ("dropout", "0.1", ["model_config.dropout must be a number"]),
    ("positions", "alibi", ["--positions must be one of"]),
    ("positions", None, ["model_config.positions must be a string, got null"]),
    ("n_embd", -32, ["--embd must be at least 1"]),
    ("rope_base", float("nan"), ["rope_base"]),
    ("logit_softcap", float("inf"), ["--softcap must be finite"]),
], ids=lambda v: str(v)[:12])
def test_a_config_field_of_the_wrong_type_or_range(tmp_path, field, value, words):
    refused(write(tmp_path, model_config=config(**{field: value})), *words)


def test_an_unknown_config_field_is_ignored(tmp_path):
    # a newer tinylm's field: the file still loads (tests/test_model.py holds from_dict to this too)
    loaded = load_model(write(tmp_path, model_config=config(no_such_field=1)))
    assert not hasattr(loaded.model.cfg, "no_such_field")


@pytest.mark.parametrize("changes,words", [
    (dict(context_size=10**9), ["--context must be at most 1048576"]),
    (dict(context_size=1 << 20, positions="sinusoidal", n_embd=4096, n_head=32), ["position table"]),
    (dict(n_layer=1000, n_embd=65536, n_head=64), ["parameters, more than"]),
    (dict(vocab_size=10**8), ["--vocab-size must be at most"]),
])
def test_a_config_too_big_to_allocate_is_refused_at_once(tmp_path, changes, words):
    refused(write(tmp_path, model_config=config(**changes)), *words)  # within a second: nothing was allocated


def test_a_context_the_tensors_do_not_have_is_refused_before_allocating(tmp_path):
    refused(write(tmp_path, model_config=config(context_size=1 << 20)), "wpe.weight", "shape")


@pytest.mark.parametrize("extra", [+5, -5])
def test_a_tokenizer_larger_or_smaller_than_the_embedding(tmp_path, extra):
    chars = TOK.chars + [chr(0x4E00 + i) for i in range(extra)] if extra > 0 else TOK.chars[:extra]
    refused(write(tmp_path, tokenizer={"type": "char", "specials": TOK.specials, "chars": chars}),
            f"its tokenizer has {TOK.vocab_size + extra} tokens but model_config.vocab_size is {TOK.vocab_size}")


@pytest.mark.parametrize("field,value,words", [
    ("model_config", [1, 2], ["model_config must be a JSON object, got a JSON list"]),
    ("tokenizer", ["a", "b"], ["tokenizer must be a JSON object"]),
    ("meta", [], ["meta must be a JSON object"]),
    ("tokenizer", {"type": "char", "chars": "abc"}, ["'chars' must be a list"]),
    ("tokenizer", {"type": "char", "chars": [1, 2]}, ["'chars' must be a list"]),
    ("tokenizer", {"type": "bpe", "specials": {"<EOS>": 10**12}, "first_id": 0, "pattern": "gpt2", "ranks": []},
     ["BPE tokenizer data is damaged"]),
    ("model_config", None, ["no 'model_config'"]),
    ("tokenizer", "{nope", ["tokenizer is not valid JSON"]),
], ids=lambda v: str(v)[:16])
def test_metadata_of_the_wrong_shape(tmp_path, field, value, words):
    refused(write(tmp_path, **{field: value}), *words)


def test_weights_relabelled_to_another_dtype(tmp_path):
    tensors = dict(TENSORS, **{"ln_f.weight": TENSORS["ln_f.weight"].half()})
    refused(write(tmp_path, tensors), "tensor ln_f.weight is stored as F16, expected F32")
    as_int = dict(TENSORS, **{"ln_f.weight": TENSORS["ln_f.weight"].view(torch.int32)})  # same bytes, other label
    refused(write(tmp_path, as_int), "tensor ln_f.weight is stored as I32")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    w = TENSORS["wte.weight"].clone()
    w[3, 4] = bad
    refused(write(tmp_path, dict(TENSORS, **{"wte.weight": w})), "tensor wte.weight holds NaN or infinite values")


@pytest.mark.parametrize("how", ["missing", "extra", "wrong-shape"])
def test_tensor_names_and_shapes_must_be_those_of_the_config(tmp_path, how):
    tensors = dict(TENSORS)
    if how == "missing":
        del tensors["ln_f.bias"]
    elif how == "extra":
        tensors["lm_head.weight"] = tensors["wte.weight"].clone()  # tied models store it once
    else:
        tensors["ln_f.bias"] = torch.zeros(33)
    refused(write(tmp_path, tensors), "ln_f.bias" if how != "extra" else "lm_head.weight")


# ---------------------------------------------------------------- property: any corruption loads or is refused

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=5),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                     max_leaves=6)
_SIZES = st.sampled_from([0, 1, -1, 2, 3, 16, 17, 64, 2**20, 2**20 + 1, 10**9, 2**63, 1.0, 0.5])


@st.composite
def corrupted_metadata(draw) -> dict[str, str]:
    """GOOD_META's JSON fields with 1-3 corruptions: a value replaced by random JSON or a
    boundary size, a key dropped or added, a value nested up to 3000 levels, a field replaced."""
    meta = {k: json.loads(v) for k, v in GOOD_META.items() if k != "format"}
    deep = {}  # field -> nesting depth, spliced into its text (json.dumps cannot write 3000 levels)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(meta)))
        target = meta[field]
        how = draw(st.sampled_from(["value", "size", "drop", "extra", "nest", "replace"]))
        key = draw(st.sampled_from(sorted(target))) if isinstance(target, dict) and target else None
        if how == "replace" or key is None:
            meta[field] = draw(_JSON)
        elif how == "value":
            target[key] = draw(_JSON)
        elif how == "size":
            target[key] = draw(_SIZES)
        elif how == "drop":
            del target[key]
        elif how == "extra":
            target[draw(st.text(max_size=6))] = draw(_JSON)
        else:
            target[key] = "@DEEP@"
            deep[field] = draw(st.sampled_from([5, 40, 3000]))
    out = {k: json.dumps(v) for k, v in meta.items()}
    for field, d in deep.items():
        out[field] = out[field].replace('"@DEEP@"', "[" * d + "]" * d)
    return out


def _nested(depth: int):
    v = []
    for _ in range(depth):
        v = [v]
    return v


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(corrupted_metadata())
def test_randomly_corrupted_metadata_loads_or_is_a_usage_error(tmp_path, metadata):
    p = tmp_path / "fuzz.model"
    p.write_bytes(save(TENSORS, metadata={"format": FORMAT, **metadata}))
    t0 = time.perf_counter()
    try:
        load_model(p)
    except UsageError as e:
        assert "\n" not in str(e) and str(p) in str(e)
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------- checkpoints: a damaged one is skipped, not a KeyError

TEXT = make_text(3000, seed=5)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A checkpoint folder with steps 2 and 4 of a tiny run."""
    folder = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer.train(TEXT)
    cfg = TrainConfig(max_steps=4, batch_size=4, device="cpu", checkpoint_every=2, checkpoint_minutes=0,
                      keep_checkpoints=10, val_fraction=0.0, log_interval=1)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_size=16, n_layer=1, n_head=2, n_embd=32))
    Trainer(model, tok, split_tokens(tok.encode(TEXT), 0.0, 16), cfg, checkpoints=folder / "ckpt").run()
    return folder / "ckpt"


def test_a_real_checkpoint_passes_the_check(two_checkpoints):
    for _, path in trainstate.list_checkpoints(two_checkpoints):
        trainstate.check_resumable(path, trainstate.load_checkpoint(path))


@pytest.mark.parametrize("damage,words", [
    (lambda s: s["loop"].pop("epoch"), "loop.epoch is missing"),
    (lambda s: s["schedule"].update(plateau=[1, 2]), "schedule.plateau is of the wrong type"),
    (lambda s: s["result"].update(history="x"), "result.history"),
    (lambda s: s["model"].pop("ln_f.weight"), "model weights are not those of its model_config"),
    (lambda s: s["model"].update({"ln_f.weight": torch.zeros(7)}), "model.ln_f.weight is not a float tensor of shape [32]"),
    (lambda s: s["model"]["wte.weight"].fill_(float("nan")), "NaN"),
    (lambda s: s["model_config"].update(n_layer=1.0), "model_config.n_layer must be an integer"),
    (lambda s: s.update(tokenizer="[" * 10_000), "nested"),
    (lambda s: s["rng"].update(torch=torch.zeros(3)), "RNG state"),
    (lambda s: s.update(optimizer={"state": {}, "param_groups": [{"params": [0]}]}), "optimizer covers 1 parameters"),
    (lambda s: s["optimizer"][0]["state"][0].update(exp_avg=torch.zeros(5, 5, 5)), "no parameter has"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(two_checkpoints, tmp_path, damage, words):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for _, path in trainstate.list_checkpoints(two_checkpoints):
        (folder / path.name).write_bytes(path.read_bytes())
    newest = folder / trainstate.step_file(4)
    state = trainstate.load_checkpoint(newest)
    damage(state)
    torch.save(state, newest)
    found, problems = trainstate.latest_usable(folder)
    assert found is not None and found[0].name == trainstate.step_file(2)
    assert len(problems) == 1 and str(newest) in problems[0] and words in problems[0] and "\n" not in problems[0]


# ---------------------------------------------------------------- Q&A JSON

def qa_refused(tmp_path: Path, text: str, *words: str) -> None:
    p = tmp_path / "qa.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as e:
        load_qa_json(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg, msg
    for w in words:
        assert w in msg, msg


def test_qa_nested_100k_deep_names_the_item(tmp_path):
    good = json.dumps({"question": "Hi?", "answer": "Hello."})
    qa_refused(tmp_path, f"[{good}, {good}, " + "[" * 100_000 + "]" * 100_000 + "]", "item 2,", "nested too deeply")
    qa_refused(tmp_path, '{"a":' * 100_000 + "1" + "}" * 100_000, "qa.json is nested too deeply")


def test_through_the_cli_one_line_and_exit_2(tmp_path):
    """The real command line: a crafted model file and a crafted Q&A file, each one line, exit 2."""
    write(tmp_path, model_config=config(context_size=10**9))
    rc, out, err = run_cli(["generate", "-m", "crafted.model", "-p", "ab", "--device", "cpu"], tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "--context must be at most" in err, err
    (tmp_path / "qa.json").write_text('[{"question": "q", "answer": "\\ud800"}]', encoding="utf-8")
    rc, out, err = run_cli(["train", "--qa", "-d", "qa.json", "-o", "m.model", "--steps", "1", "--device", "cpu"], tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "lone surrogate" in err, err
    assert not (tmp_path / "m.model").exists()


@pytest.mark.parametrize("key", ["question", "answer"])
def test_qa_lone_surrogate_names_the_item_and_field(tmp_path, key):
    item = {"question": "Hi?", "answer": "Hello."}
    item[key] = "bad \ud800 text"
    qa_refused(tmp_path, json.dumps([{"question": "a", "answer": "b"}, item]),
               "item 1", f'"{key}"', "lone surrogate \\ud800", "remove the escape")


def test_model_file_bytes_round_trip_still_loads(tmp_path):
    """The writer and the checks agree: what tinylm writes passes everything above."""
    p = tmp_path / "m.model"
    p.write_bytes(model_file_bytes(MODEL.state_for_saving(), MODEL.cfg, TOK, {"steps": 1}))
    assert load_model(p).meta == {"steps": 1}


def test_header_nesting_is_bounded(tmp_path):
    header = json.dumps({"__metadata__": {"format": FORMAT}, "x": {"shape": _nested(500)}}).encode()
    p = tmp_path / "deep.model"
    p.write_bytes(struct.pack("<Q", len(header)) + header)
    refused(p, "unreadable header")


def test_resume_naming_a_damaged_checkpoint_file_is_one_line(two_checkpoints, tmp_path):
    # --resume FILE reads exactly that checkpoint: a damaged one is refused, not a KeyError traceback
    (tmp_path / "corpus.txt").write_text(TEXT)
    bad = tmp_path / "bad.ckpt"
    state = trainstate.load_checkpoint(two_checkpoints / trainstate.step_file(4))
    state["loop"].pop("epoch")
    torch.save(state, bad)
    before = bad.read_bytes()
    rc, out, err = run_cli(["train", "-d", "corpus.txt", "-o", "m.model", "--device", "cpu", "--steps", "6",
                            "--resume", str(bad), "--ignore-mismatch"], tmp_path)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "loop.epoch is missing" in lines[0], err
    assert "Traceback" not in err and bad.read_bytes() == before
