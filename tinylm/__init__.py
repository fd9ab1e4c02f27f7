"""tinylm: train small GPT-style language models from scratch, and generate text with them.

The package, by concern (dependencies point one way, down this list's arrows):
    util/        errors, log format and progress, device choice, atomic file writes
    tokenizers/  char, byte-level BPE (trained here), GPT-2 / tiktoken rank files
    model/       GPTConfig, the GPT (one forward), positions, KV cache, the model file
    kernels/     optional fast paths, each equal to the plain function it replaces (select.py)
    generate/    sampling, the decoding engine, beam search, text streaming, chat
    data/        text -> token files -> batches
    train/       TrainConfig, the trainer loop, step, optimizers, schedules, checkpoints
    report/      the metrics file a run writes, loss curves, model cards, the copying measure
    presets.py, runner.py, cli.py   entry points: build configs from flags and call the library
    tokenizers <- model <- kernels <- generate / train <- runner / cli

Quick use from Python:

    from tinylm import CharTokenizer, GPT, GPTConfig, TrainConfig, Trainer, split_tokens

`tinylm.generate` is the generation package; its id-level function is `tinylm.generate.generate`
(earlier versions exported that function as the top-level `tinylm.generate`).
"""

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so `import tinylm` (and `python -m tinylm`, which
# imports this package first) costs nothing until one is needed: a Ctrl-C during start-up lands in
# the CLI's guard instead of in an import of torch here, and `tinylm --help` starts fast.
_EXPORTS = {  # name -> module that defines it
    "read_text": ".data.batches", "split_tokens": ".data.batches", "beam_search": ".generate.beam",
    "SamplingConfig": ".generate.sampling", "generate_text": ".generate.text", "load_model": ".model.files",
    "save_model": ".model.files", "GPT": ".model.gpt", "GPTConfig": ".model.gpt", "CharTokenizer": ".tokenizers",
    "Tokenizer": ".tokenizers", "evaluate": ".train.step", "Trainer": ".train.trainer", "TrainConfig": ".train.trainer",
    "UsageError": ".util.errors",
}


def __getattr__(name: str):
    import importlib  # noqa: PLC0415

    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # a subpackage not imported yet, e.g. `tinylm.generate`
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'tinylm' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["GPT", "GPTConfig", "CharTokenizer", "Tokenizer", "TrainConfig", "Trainer", "SamplingConfig", "UsageError",
           "beam_search", "generate_text", "evaluate", "load_model", "save_model", "read_text", "split_tokens"]
