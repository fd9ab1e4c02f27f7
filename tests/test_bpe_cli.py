"""BPE through the command line: `tinylm tokenizer train`, and char vs BPE training end to end
(train, then generate from the saved model) in subprocesses."""

import json

import pytest

from conftest import make_text, run_cli
from tinylm.model.files import load_model
from tinylm.tokenizers.bpe import BPETokenizer

TINY = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--steps", "15", "--batch-size", "4",
        "--warmup", "2", "--lr", "1e-2", "--eval-interval", "15"]


def test_tokenizer_train_command_writes_a_loadable_file(tmp_path):
    (tmp_path / "corpus.txt").write_text(make_text(6000, seed=3), encoding="utf-8")
    rc, out, err = run_cli(["tokenizer", "train", "-d", "corpus.txt", "--vocab-size", "300", "-o", "tok.json"], tmp_path)
    assert rc == 0, err
    tok = BPETokenizer.load(tmp_path / "tok.json")
    assert tok.vocab_size == 300
    text = "the quick brown fox, ünïcödé 😀"
    assert tok.decode(tok.encode(text)) == text
    assert json.loads((tmp_path / "tok.json").read_text())["type"] == "bpe"
    # an existing output is not overwritten without --force
    before = (tmp_path / "tok.json").read_bytes()
    rc, _, err = run_cli(["tokenizer", "train", "-d", "corpus.txt", "--vocab-size", "290", "-o", "tok.json"], tmp_path)
    assert rc == 2 and "--force" in err
    assert (tmp_path / "tok.json").read_bytes() == before


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_train_then_generate_with_each_tokenizer(tmp_path, tokenizer):
    (tmp_path / "corpus.txt").write_text(make_text(8000, seed=4), encoding="utf-8")
    extra = ["--tokenizer", tokenizer] + (["--vocab-size", "300"] if tokenizer == "bpe" else [])
    rc, _, err = run_cli(["train", "-d", "corpus.txt", "-o", "m.model", *TINY, *extra], tmp_path)
    assert rc == 0, err
    loaded = load_model(tmp_path / "m.model")
    assert loaded.tokenizer.kind == tokenizer
    assert loaded.model.cfg.vocab_size == (300 if tokenizer == "bpe" else loaded.tokenizer.vocab_size)
    rc, out, err = run_cli(["generate", "-m", "m.model", "-p", "the ", "-n", "20", "--seed", "1"], tmp_path)
    assert rc == 0, err
    assert out.startswith("the ") and len(out) > len("the \n")
