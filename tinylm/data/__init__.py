"""Data: text -> token ids -> memory-mapped token files -> batches and validation windows.

Reading a user's text with clear errors, the train/validation split and batches (batches.py),
the token cache written once per corpus and tokenizer (data/tokenfile.py), windows over a memmap
(data/tokenstream.py), the default corpus (data/corpus.py). Imports tokenizers/ and util/; knows
nothing about models or training.
"""

from .batches import ChunkBatches, TokenSplit, eval_windows, read_text, split_tokens

__all__ = ["ChunkBatches", "TokenSplit", "eval_windows", "read_text", "split_tokens"]
