"""Named presets (model shape plus training defaults) and how flags are layered over them.

tiny/small/medium follow seed 001's table; classic is seed 000's TinyLM model and trainer; cpu
is a small char model tuned for a 2-core machine; speedrun is the fastest recipe we measured to
val loss 1.47 on tiny Shakespeare on one GPU, speedrun60 the best within a minute (bench/RESULTS.md). A preset only fills in values
the user did not give as flags. Used by the entry points (cli.py, main.py), not by the library.
"""

from __future__ import annotations

from .model.gpt import GPTConfig
from .train.trainer import TrainConfig

# name -> {GPTConfig or TrainConfig field: value}
PRESETS: dict[str, dict] = {
    "tiny": dict(n_embd=384, n_layer=6, n_head=6, context_size=256, d_ff=512),
    "small": dict(n_embd=512, n_layer=8, n_head=8, context_size=256, d_ff=1024),
    "medium": dict(n_embd=768, n_layer=12, n_head=12, context_size=256, d_ff=1536),
    "classic": dict(n_embd=192, n_layer=4, n_head=4, context_size=512, d_ff=768, dropout=0.1,
                    batch_size=32, lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.01,
                    schedule="plateau", epochs=10000, warmup_steps=0, min_lr=0.0),
    # measured on a 2-core CPU (bench/RESULTS.md): small batches at a high rate learn the most per
    # second there; 3 thin layers beat 4
    "cpu": dict(n_embd=128, n_layer=3, n_head=4, context_size=64, d_ff=512, dropout=0.0,
                batch_size=16, lr=5e-3, min_lr=5e-4, warmup_steps=30, weight_decay=0.1, eval_interval=400),
    "speedrun": dict(n_embd=384, n_layer=6, n_head=6, context_size=256, d_ff=1536, dropout=0.2,
                     batch_size=64, lr=2e-3, min_lr=2e-4, beta2=0.99, warmup_steps=50, weight_decay=0.1,
                     time_budget=18.0, eval_interval=100),
    # best validation loss within a minute: the same model, regularised harder (dropout, weight decay),
    # twice the batch at 1.5x the rate (the graph-replayed step is launch-bound: more tokens per step are cheap)
    "speedrun60": dict(n_embd=384, n_layer=6, n_head=6, context_size=256, d_ff=1536, dropout=0.35,
                       batch_size=128, lr=1.5e-3, min_lr=1.5e-4, beta2=0.99, warmup_steps=100, weight_decay=3.0,
                       time_budget=50.0, eval_interval=100),
}

# Above this many block parameters a step is limited by GPU arithmetic, not by how fast Python can
# launch kernels, so torch.compile's fused kernels pay for their compile time; below it the CUDA
# graph of eager kernels starts at once (measured: 124M shape 26.6 ms/step compiled + graph vs 36.5
# graph alone; 10M char shape 6.1 vs 7.8 ms/step, but ~14 s of cold compile, bench/RESULTS.md).
COMPILE_ABOVE_PARAMS = 50_000_000


def choose_speed(model_kw: dict, train_kw: dict, device_type: str) -> None:
    """Fill in compile/cuda_graph where the user left them on auto."""
    if train_kw.get("compile", "auto") != "auto":
        return
    if device_type != "cuda":
        train_kw["compile"] = "off"
        return
    width, layers = model_kw.get("n_embd", GPTConfig.n_embd), model_kw.get("n_layer", GPTConfig.n_layer)
    big = 12 * layers * width * width >= COMPILE_ABOVE_PARAMS
    adamw = train_kw.get("optimizer", "adamw") == "adamw"
    # big: the compiled kernels, recorded in the step's CUDA graph when the optimizer allows it
    train_kw["compile"] = "model" if big or not adamw else "off"
    if train_kw.get("cuda_graph") is None:
        train_kw["cuda_graph"] = adamw


def build_configs(name: str, model_over: dict, train_over: dict, device_type: str) -> tuple[dict, TrainConfig]:
    """(GPTConfig keyword arguments, TrainConfig) for preset `name` with explicit overrides."""
    preset = PRESETS[name]
    model_kw = {k: v for k, v in preset.items() if k in GPTConfig.__dataclass_fields__} | model_over
    train_kw = {k: v for k, v in preset.items() if k in TrainConfig.__dataclass_fields__} | train_over
    choose_speed(model_kw, train_kw, device_type)
    if not any(train_kw.get(k) for k in ("epochs", "max_steps", "time_budget")):
        train_kw["epochs"] = 1
    return model_kw, TrainConfig(**train_kw)
