"""Load a trained model and generate with each decoding strategy.

    python examples/inference_example.py [model file]   (default: models/example.model, made by train_example.py)
"""

import sys

from tinylm import SamplingConfig, generate_text, load_model

path = sys.argv[1] if len(sys.argv) > 1 else "models/example.model"
loaded = load_model(path)
model, tok = loaded.model, loaded.tokenizer
prompt = "First Citizen:\n"

strategies = {
    "greedy": SamplingConfig(max_new_tokens=80, temperature=0),
    "temperature 0.8": SamplingConfig(max_new_tokens=80, temperature=0.8, seed=1),
    "top-k 5": SamplingConfig(max_new_tokens=80, temperature=1.0, top_k=5, seed=1),
    "top-p 0.9": SamplingConfig(max_new_tokens=80, temperature=1.0, top_p=0.9, seed=1),
}
for name, cfg in strategies.items():
    print(f"--- {name}\n{prompt}{generate_text(model, tok, prompt, cfg, unknown='replace')}")
print(f"--- beam search (4 beams)\n{prompt}{generate_text(model, tok, prompt, SamplingConfig(max_new_tokens=40), beams=4, unknown='replace')}")
