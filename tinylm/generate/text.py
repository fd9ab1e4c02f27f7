"""Text in, text out: the bridge between a tokenizer and the id-level engine in generate/engine.py.

Encodes the prompt, runs sampling (one or several samples) or beam search, and turns ids back
into text. Owns the two text-level features the engine cannot see:
- stop strings: a sample ends as soon as any of them appears in its *generated* text (one in the
  prompt does not count), and its text is cut exactly before the earliest one present then;
- streaming: text is handed out piece by piece, decoded incrementally, so bytes of a multi-byte
  character (or a BPE piece that splits one) wait until the character is complete, and a tail
  that could be the start of a stop string waits until it is known not to be one. What is
  streamed always concatenates to the returned text.
"""

from __future__ import annotations

import codecs
from typing import Callable, Sequence, TextIO

import torch

from ..util.errors import UsageError
from .beam import beam_search
from .engine import Engine, SamplingConfig, resolve_window
from .sampling import check_request
from ..util.log import log


def encode_prompt(tokenizer, prompt: str, context_size: int | None = None, unknown: str = "error",
                  allow_special: bool = False) -> list[int]:
    """Prompt text -> ids. allow_special: "<BOS>" etc. in the text become their ids (chat).
    A prompt longer than the context is kept whole here; generation uses its last tokens."""
    if not prompt:
        raise UsageError("the prompt is empty; pass some text with -p/--prompt")
    kwargs = {"unknown": unknown} if tokenizer.kind == "char" else {}
    ids = tokenizer.encode(prompt, allow_special=allow_special, **kwargs)
    if not ids:
        raise UsageError("the prompt encodes to no tokens; pass some text with -p/--prompt")
    if context_size is not None and len(ids) > context_size:
        log.warning("the prompt is %d tokens, more than the model's context of %d; only its last %d are seen",
                    len(ids), context_size, context_size)
    return ids


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one was found).
    Example: "ab\\n\\ncd", stops ["\\n\\n", "c"] -> ("ab", True)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TextStream:
    """One sample's ids -> its text, as it grows. `push` returns the text that has become final;
    once a stop string or EOS has been seen, `stopped` is True and nothing more comes out."""

    def __init__(self, tokenizer, stops: Sequence[str] = (), eos_id: int | None = None):
        self.tokenizer, self.stops, self.eos_id = tokenizer, list(stops), eos_id
        self.longest = max((len(s) for s in self.stops), default=0)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far, cut before the stop string once one is found
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        if token == self.eos_id:
            return self.close()
        return self._add(self.decoder.decode(self.tokenizer.decode_bytes([token])), final=False)

    def close(self) -> str:
        """The rest of the text: generation has ended."""
        if self.stopped:
            return ""
        out = self._add(self.decoder.decode(b"", final=True), final=True)
        self.stopped = True
        return out

    def _add(self, piece: str, final: bool) -> str:
        if piece:
            # subtle: a stop string may straddle the old text and the new piece, so search from
            # the last point where one could start; earlier text was searched before.
            start = max(0, len(self.text) - self.longest + 1)
            self.text += piece
            cut, found = cut_at_stop(self.text[start:], self.stops)
            if found:
                self.text, self.stopped, final = self.text[:start] + cut, True, True
        end = len(self.text) if final else len(self.text) - self._held_back()
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string: it may
        yet turn into one. Example: text "ab\n", stops ["\n\n"] -> 1."""
        for n in range(min(len(self.text), self.longest - 1), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stops):
                return n
        return 0


def write_out(stream: TextIO, text: str) -> None:
    """Write and flush `text`, whatever the stream can take: characters its encoding lacks (e.g.
    PYTHONIOENCODING=ascii) become "?", and a full disk or device (stdout on /dev/full) is a
    UsageError. A closed pipe stays a BrokenPipeError: the CLI ends quietly on it."""
    encoding = getattr(stream, "encoding", None)
    if encoding:
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            text = text.encode(encoding, errors="replace").decode(encoding)
        except LookupError:
            pass
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise UsageError(f"cannot write the generated text to {getattr(stream, 'name', 'the output')} "
                         f"({e.strerror or e}); send it to a file with room, or a terminal") from None


def finish_text(tokenizer, ids: list[int], eos_id: int | None, stops: Sequence[str]) -> str:
    """A sample's generated ids -> its text: up to its EOS, cut before the first stop string."""
    if eos_id is not None and eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return cut_at_stop(tokenizer.decode(ids), stops)[0]


def _sample(model, tokenizer, ids: list[int], cfg: SamplingConfig, num_samples: int, stops: list[str],
            decode: str, window: str, on_text: Callable[[str], None] | None, engine: Engine | None) -> list[str]:
    device = next(model.parameters()).device
    eos = tokenizer.eos_id
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)  # (N, T0)
    if engine is None:
        engine = Engine(model, num_samples, tokenizer.vocab_size, cfg, eos, decode=decode, window=window)
    on_token, streams = None, []
    if stops or on_text is not None:  # the host must see every token: decode as we go
        streams = [TextStream(tokenizer, stops, eos) for _ in range(num_samples)]

        def on_token(tok: torch.Tensor) -> list[bool]:
            for s, t in zip(streams, tok.tolist()):
                piece = s.push(t)
                if piece and on_text is not None:
                    on_text(piece)
            return [s.stopped for s in streams]

    out = engine(x, on_token)
    if on_text is not None:
        tail = streams[0].close()  # the generation ran out of tokens: release what was held back
        if tail:
            on_text(tail)
    return [finish_text(tokenizer, row[len(ids):], eos, stops) for row in out.tolist()]


def generate_texts(model, tokenizer, prompt: str, cfg: SamplingConfig, num_samples: int = 1, stop: Sequence[str] = (),
                   unknown: str = "error", allow_special: bool = False, decode: str = "auto", window: str = "auto",
                   engine: Engine | None = None) -> list[str]:
    """`num_samples` continuations of `prompt` (without the prompt), sampled in one batch; sample
    i uses seed cfg.seed + i, so it is what that seed gives alone. engine: a ready Engine for
    batch num_samples and these settings, to reuse across calls."""
    stops = check_request(num_samples=num_samples, stop=stop)
    ids = encode_prompt(tokenizer, prompt, model.cfg.context_size, unknown, allow_special)
    return _sample(model, tokenizer, ids, cfg, num_samples, stops, decode, window, None, engine)


def generate_text(model, tokenizer, prompt: str, cfg: SamplingConfig, beams: int = 1,
                  stream: TextIO | None = None, unknown: str = "error", echo_prompt: bool = False,
                  on_text: Callable[[str], None] | None = None, stop: Sequence[str] = (),
                  allow_special: bool = False, decode: str = "auto", window: str = "auto",
                  engine: Engine | None = None) -> str:
    """Return the continuation of `prompt` (without the prompt). With `stream` (and/or on_text)
    the text is handed out piece by piece as it is produced (beam search: all at the end), after
    the prompt itself when `echo_prompt` (only once the prompt is known to be valid)."""
    stops = check_request(beams=beams, stop=stop)
    resolve_window(window, model.cfg.positions)  # fail before echoing the prompt
    ids = encode_prompt(tokenizer, prompt, model.cfg.context_size, unknown, allow_special)
    if beams == 1 and engine is None:  # built before echoing: it checks --decode and --window
        engine = Engine(model, 1, tokenizer.vocab_size, cfg, tokenizer.eos_id, decode=decode, window=window)
    if stream is not None and echo_prompt:
        write_out(stream, prompt)

    def emit(piece: str) -> None:
        if stream is not None:
            write_out(stream, piece)
        if on_text is not None:
            on_text(piece)

    if beams > 1:
        device = next(model.parameters()).device
        x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T0)
        out = beam_search(model, x, tokenizer.vocab_size, beams, cfg.max_new_tokens, tokenizer.eos_id, window=window)
        text = finish_text(tokenizer, out[len(ids):], tokenizer.eos_id, stops)
        if text:
            emit(text)
        return text
    streaming = stream is not None or on_text is not None
    return _sample(model, tokenizer, ids, cfg, 1, stops, decode, window, emit if streaming else None, engine)[0]
