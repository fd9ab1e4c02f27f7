"""Generation: pure sampling functions on logits (generate/sampling.py), the decoding engine and beam
search over token ids (engine.py), text in and out with stop strings and streaming (text.py),
and the Q&A chat loop (generate/chat.py).

The engine knows nothing about tokenization, only token ids. Imports model/, kernels/ (through
kernels/select.py), tokenizers/ and util/; never data/, train/ or the CLI.
"""

from .beam import beam_search
from .engine import Decoder, Engine, generate
from .sampling import SamplingConfig
from .text import generate_text, generate_texts

__all__ = ["Decoder", "Engine", "SamplingConfig", "beam_search", "generate", "generate_text", "generate_texts"]
