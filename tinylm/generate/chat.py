"""Question-and-answer models: the Q&A text format (seed 001), its JSON data file, and the
interactive chat loop of `tinylm chat`.

The format: each pair is `<BOS>Question: {q}\\nAnswer: {a}<EOS>`, where <BOS> and <EOS> are the
special tokens (ids 2 and 3 of every tinylm tokenizer). Training text (built from load_qa_json)
and chat prompts both come from `format_qa`, so the model is asked in exactly the form it
learned; the prompt form stops after "Answer: " and the model's EOS ends its reply.

This module does not train (the runner builds training text with these functions) and does not
sample (generate/text.py does).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from ..util.errors import UsageError
from ..tokenizers.base import BOS, EOS

EXIT_WORDS = ("exit", "quit")


def format_qa(question: str, answer: str | None = None) -> str:
    """One Q&A pair as training text, or (answer None) the prompt that asks for the answer.
    Example: format_qa("Hi?") -> "<BOS>Question: Hi?\\nAnswer: "."""
    prompt = f"{BOS}Question: {question}\nAnswer: "
    return prompt if answer is None else f"{prompt}{answer}{EOS}"


def load_qa_json(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a JSON list of objects with "question" and "answer" strings (optional "id" and
    "category" are allowed and ignored) -> [(question, answer)]. Any problem is a UsageError
    that names the file and the item."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"Q&A file {p} does not exist or is not a file; check the path")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text)
    except RecursionError:  # json's C parser recurses once per nesting level
        item = _item_at_depth(text)
        where = f"Q&A file {p}" + (f", item {item}," if item is not None else "")
        raise UsageError(f"{where} is nested too deeply for the JSON reader "
                         "(arrays or objects inside each other); each item must be a flat {\"question\": ..., \"answer\": ...} object") from None
    except UnicodeDecodeError:
        raise UsageError(f"Q&A file {p} is not UTF-8 text; save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"Q&A file {p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except OSError as e:
        raise UsageError(f"Q&A file {p} cannot be read ({e.strerror}); check its permissions") from None
    if not isinstance(data, list):
        raise UsageError(f"Q&A file {p} must hold a JSON list of {{\"question\": ..., \"answer\": ...}} objects, "
                         f"not a JSON {type(data).__name__}")
    if not data:
        raise UsageError(f"Q&A file {p} holds an empty list; add at least one {{\"question\": ..., \"answer\": ...}} object")
    pairs = []
    for i, item in enumerate(data):
        where = f"Q&A file {p}, item {i}"
        if not isinstance(item, dict):
            raise UsageError(f"{where} is a JSON {type(item).__name__}, not an object with \"question\" and \"answer\"")
        for key in ("question", "answer"):
            if key not in item:
                raise UsageError(f"{where} has no \"{key}\" field; every item needs \"question\" and \"answer\"")
            if not isinstance(item[key], str):
                raise UsageError(f"{where}: \"{key}\" must be a string, not a JSON {type(item[key]).__name__}")
            if not item[key].strip():
                raise UsageError(f"{where}: \"{key}\" is empty")
            try:
                item[key].encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800": JSON allows the escape, text cannot hold it
                raise UsageError(f"{where}: \"{key}\" holds the lone surrogate \\u{ord(item[key][e.start]):04x}, "
                                 "which is not a character; remove the escape, or write the character itself") from None
        pairs.append((item["question"], item["answer"]))
    return pairs


def _item_at_depth(text: str, limit: int = 100) -> int | None:
    """Index of the top-level item of JSON list `text` where nesting first passes `limit` levels,
    found by scanning brackets outside strings (no recursion); None if the top level is not a list.
    '[{"q": 1}, [[[[...' -> 1."""
    from ..model.files import JSON_STRING  # noqa: PLC0415 - torch is not imported until an error needs it

    depth, item = 0, 0
    for m in re.finditer(r"[\[\]{},]", JSON_STRING.sub('""', text)):
        c = m.group()
        if c == "," and depth == 1:
            item += 1
        depth += 1 if c in "[{" else -1 if c in "]}" else 0
        if depth > limit:
            return item if text.lstrip().startswith("[") else None
    return None


def chat(model, tokenizer, cfg, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
         stop=(), unknown: str = "error", decode: str = "auto", window: str = "auto", beams: int = 1) -> int:
    """The interactive loop: read a question per line, stream the model's answer until its EOS.
    Ctrl-C stops the answer being written (not the program); EOF (Ctrl-D) or `exit` ends the
    loop. Returns the number of questions answered."""
    from .engine import Engine  # noqa: PLC0415 - keeps `import tinylm.chat` light for the runner
    from .text import generate_text  # noqa: PLC0415

    engine = Engine(model, 1, tokenizer.vocab_size, cfg, tokenizer.eos_id, decode=decode, window=window)  # recorded once
    tty = stdin.isatty()
    stderr.write("Ask a question; an empty line does nothing, `exit` or Ctrl-D ends, Ctrl-C stops an answer.\n")
    answered = 0
    while True:
        stdout.write("> " if tty else "")
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stderr.write("\n(type exit or press Ctrl-D to leave)\n")
            continue
        if not line:  # EOF
            break
        question = line.strip()
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            break
        if not tty:  # show the question, so a piped session reads as a transcript
            stdout.write(f"> {question}\n")
        try:
            generate_text(model, tokenizer, format_qa(question), cfg, beams=beams, stream=stdout, unknown=unknown,
                          stop=stop, allow_special=True, window=window, engine=engine)
            answered += 1
        except UsageError as e:  # e.g. a character the model never saw: say so, keep chatting
            stderr.write(f"error: {e}\n")
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        stdout.flush()
    return answered
