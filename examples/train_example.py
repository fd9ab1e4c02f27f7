"""Train a small character-level model from Python, then save it.

    python examples/train_example.py [text file]     (default: a short built-in text)

Uses the library directly: tokenizer -> token split -> model -> Trainer. The same job from the
command line is `tinylm train -d FILE --preset cpu --steps 300`.
"""

import sys
from pathlib import Path

from tinylm import CharTokenizer, GPT, GPTConfig, TrainConfig, Trainer, split_tokens

SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n") * 40

text = Path(sys.argv[1]).read_text(encoding="utf-8") if len(sys.argv) > 1 else SAMPLE
tokenizer = CharTokenizer.train(text)
split = split_tokens(tokenizer.encode(text), val_fraction=0.1, context=64)
model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_size=64, n_layer=2, n_head=4, n_embd=64))
print(f"{model.num_params():,} parameters, vocabulary {tokenizer.vocab_size}")

out = Path("models/example.model")
out.parent.mkdir(exist_ok=True)
cfg = TrainConfig(max_steps=200, batch_size=16, lr=3e-3, warmup_steps=20, eval_interval=100, device="cpu")
result = Trainer(model, tokenizer, split, cfg, out=out).run()
print(f"best validation loss {result.best_val:.3f}; saved {out}")
