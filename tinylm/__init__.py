"""tinylm: train small GPT-style language models from scratch, and generate text with them.

The library, in dependency order: tokenizers <- model <- generate / train <- runner / cli.
Quick use from Python:

    from tinylm import CharTokenizer, GPT, GPTConfig, TrainConfig, Trainer, split_tokens
"""

__version__ = "0.1.0"

from .checkpoint import load_model, save_model  # noqa: E402
from .data import read_text, split_tokens  # noqa: E402
from .errors import UsageError  # noqa: E402
from .generate import SamplingConfig, beam_search, generate  # noqa: E402
from .model import GPT, GPTConfig  # noqa: E402
from .textgen import generate_text  # noqa: E402
from .tokenizers import CharTokenizer, Tokenizer  # noqa: E402
from .train import Trainer, TrainConfig, evaluate  # noqa: E402

__all__ = ["GPT", "GPTConfig", "CharTokenizer", "Tokenizer", "TrainConfig", "Trainer", "SamplingConfig", "UsageError",
           "generate", "beam_search", "generate_text", "evaluate", "load_model", "save_model", "read_text", "split_tokens"]
