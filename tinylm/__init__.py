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

from .data.batches import read_text, split_tokens  # noqa: E402
from .generate.beam import beam_search  # noqa: E402
from .generate.sampling import SamplingConfig  # noqa: E402
from .generate.text import generate_text  # noqa: E402
from .model.files import load_model, save_model  # noqa: E402
from .model.gpt import GPT, GPTConfig  # noqa: E402
from .tokenizers import CharTokenizer, Tokenizer  # noqa: E402
from .train.step import evaluate  # noqa: E402
from .train.trainer import Trainer, TrainConfig  # noqa: E402
from .util.errors import UsageError  # noqa: E402

__all__ = ["GPT", "GPTConfig", "CharTokenizer", "Tokenizer", "TrainConfig", "Trainer", "SamplingConfig", "UsageError",
           "beam_search", "generate_text", "evaluate", "load_model", "save_model", "read_text", "split_tokens"]
