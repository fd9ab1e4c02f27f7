"""Text in, text out: the bridge between a tokenizer and the id-level engine in generate.py.

Encodes the prompt, runs sampling or beam search, and streams the continuation as text. Streaming
decodes incrementally: bytes of a multi-byte character (or a BPE piece that splits one) are held
back until the character is complete, so what is printed always concatenates to the final text.
"""

from __future__ import annotations

import codecs
from typing import Callable, TextIO

import torch

from .errors import UsageError
from .generate import SamplingConfig, beam_search, generate


def encode_prompt(tokenizer, prompt: str, context_size: int, unknown: str = "error") -> list[int]:
    if not prompt:
        raise UsageError("the prompt is empty; pass some text with -p/--prompt")
    kwargs = {"unknown": unknown} if tokenizer.kind == "char" else {}
    ids = tokenizer.encode(prompt, **kwargs)
    if not ids:
        raise UsageError("the prompt encodes to no tokens; pass some text with -p/--prompt")
    return ids


def generate_text(model, tokenizer, prompt: str, cfg: SamplingConfig, beams: int = 1,
                  stream: TextIO | None = None, unknown: str = "error", echo_prompt: bool = False,
                  on_text: Callable[[str], None] | None = None) -> str:
    """Return the continuation of `prompt` (without the prompt). With `stream`, the text is
    written there piece by piece as it is produced (sampling only; beam search prints at the end),
    after the prompt itself when `echo_prompt` (only once the prompt is known to be valid)."""
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompt, model.cfg.context_size, unknown)
    if stream is not None and echo_prompt:
        stream.write(prompt)
        stream.flush()
    x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T0)
    vocab = tokenizer.vocab_size
    eos = tokenizer.eos_id
    if beams > 1:
        out = beam_search(model, x, vocab, beams, cfg.max_new_tokens, eos)
        text = tokenizer.decode([t for t in out[len(ids):] if t != eos])
        if stream is not None:
            stream.write(text)
            stream.flush()
        return text
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []

    def on_token(tok: torch.Tensor) -> None:
        t = int(tok[0])
        if t == eos:
            return
        piece = decoder.decode(tokenizer.decode_bytes([t]))
        if piece:
            pieces.append(piece)
            if stream is not None:
                stream.write(piece)
                stream.flush()
            if on_text is not None:
                on_text(piece)

    generate(model, x, cfg, vocab, eos_id=eos, on_token=on_token)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        if stream is not None:
            stream.write(tail)
    return "".join(pieces)
