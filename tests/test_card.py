"""tinylm info / model_card (report/card.py): the parameter count, config, tokenizer, data summary
and losses a trained model's card shows, as text and JSON; an older file's missing fields."""

from __future__ import annotations

import hashlib
import json

from conftest import make_text
from tinylm.model.files import save_model
from tinylm.model.gpt import GPT, GPTConfig
from tinylm.report.card import card_text, model_card
from tinylm.report.metrics import read_metrics
from tinylm.runner import TrainJob, run_training
from tinylm.tokenizers import CharTokenizer
from tinylm.train.trainer import TrainConfig

TEXT = make_text(5000, seed=9)


def test_card_of_a_trained_model(tmp_path, capsys):
    from tinylm.cli import main

    data = tmp_path / "corpus.txt"
    data.write_text(TEXT, encoding="utf-8")
    model = dict(n_layer=2, n_head=2, n_embd=32, context_size=16, d_ff=48, positions="rope", tie_weights=False)
    job = TrainJob(dataset=str(data), output=tmp_path / "out.model", model=model,
                   train=TrainConfig(max_steps=8, batch_size=4, device="cpu", eval_interval=4, log_interval=2,
                                     checkpoint_minutes=0))
    run_training(job)
    card = model_card(tmp_path / "out.model")
    vocab = len(set(TEXT)) + len(CharTokenizer.train(TEXT).specials)
    want = GPT(GPTConfig(vocab_size=vocab, **model)).num_params()  # the reference: a fresh model of that config
    assert card["parameters"] == want
    assert card["architecture"]["layers"] == 2 and card["architecture"]["positions"] == "rope"
    assert card["architecture"]["tied_head"] is False and card["architecture"]["mlp"] == 48
    assert card["tokenizer"] == {"type": "char", "vocab_size": vocab, "pattern": None,
                                 "specials": CharTokenizer.train(TEXT).specials}
    assert card["training_data"] == {"file": str(data), "bytes": len(TEXT.encode()), "tokens": len(TEXT),
                                     "sha256": hashlib.sha256(TEXT.encode()).hexdigest()}
    evals = [r["val_loss"] for r in read_metrics(tmp_path / "out.metrics.jsonl") if r["kind"] == "eval"]
    assert card["training"]["steps"] == 8 and card["training"]["tokens_seen"] == 8 * 4 * 16
    assert card["training"]["best_val_loss"] == min(evals) and card["training"]["last_val_loss"] == evals[-1]
    assert card["tinylm_version"] and card["read_by"]

    assert main(["info", "-m", str(tmp_path / "out.model")]) == 0
    out = capsys.readouterr().out
    assert out == card_text(card)
    assert f"parameters: {want:,}\n" in out and "2 layers, 2 heads" in out and "untied head" in out
    assert main(["info", "-m", str(tmp_path / "out.model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(card))


def test_a_file_without_training_metadata_says_unknown(tmp_path):
    tok = CharTokenizer.train(TEXT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, context_size=8))
    save_model(tmp_path / "bare.model", model, tok, {})
    card = model_card(tmp_path / "bare.model")
    assert card["parameters"] == model.num_params()
    assert card["training"]["steps"] is None and card["training_data"]["sha256"] is None
    text = card_text(card)
    assert "training: unknown steps" in text and "sha256 unknown" in text
