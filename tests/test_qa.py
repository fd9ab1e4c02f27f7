"""Q&A fine-tuning from a JSON file (seed 001): `tinylm train --qa` trains on
<BOS>Question: q\\nAnswer: a<EOS> with the markers as special tokens, and `tinylm chat` asks in
the same form."""

import json

import torch

from conftest import run_cli
from tinylm.generate.chat import format_qa
from tinylm.model.files import load_model
from tinylm.runner import TrainJob, run_training
from tinylm.train.trainer import TrainConfig

PAIRS = [{"id": 1, "category": "Identity", "question": "Who are you?", "answer": "I am tinylm."},
         {"id": 2, "category": "Identity", "question": "What is your name?", "answer": "My name is tinylm."}]


def test_qa_training_uses_special_markers(tmp_path):
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps(PAIRS * 30), encoding="utf-8")
    job = TrainJob(dataset=str(qa), output=tmp_path / "qa.model", qa=True,
                   model=dict(n_layer=2, n_head=2, n_embd=64, context_size=64),
                   train=TrainConfig(max_steps=150, batch_size=8, lr=3e-3, warmup_steps=10, val_fraction=0.0, device="cpu"))
    run_training(job)
    loaded = load_model(tmp_path / "qa.model")
    tok = loaded.tokenizer
    assert "<" not in tok.chars and ">" not in tok.chars  # markers are special tokens, not text
    prompt = tok.encode(format_qa("Who are you?"), allow_special=True)
    assert prompt[0] == tok.bos_id
    # the model learned the answer and where it ends: greedy decoding reproduces it, then EOS
    model = loaded.model.eval()
    ids = torch.tensor([prompt])
    for _ in range(20):
        nxt = int(model(ids)[0][0, -1, :tok.vocab_size].argmax())
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        if nxt == tok.eos_id:
            break
    assert tok.decode(ids[0, len(prompt):].tolist()) == "I am tinylm."
    assert int(ids[0, -1]) == tok.eos_id


def test_qa_file_errors_are_one_line(tmp_path):
    (tmp_path / "bad.json").write_text('[{"question": "Hi?"}]', encoding="utf-8")
    rc, out, err = run_cli(["train", "--qa", "-d", "bad.json", "-o", "m.model", "--steps", "1"], tmp_path)
    assert rc == 2
    assert err.strip().count("\n") == 0 and '"answer"' in err and "Traceback" not in err
    assert not (tmp_path / "m.model").exists()
