"""Train a small byte-level BPE tokenizer and look at what it does.

    python examples/bpe_example.py                      # the built-in paragraph, vocab 300
    python examples/bpe_example.py corpus.txt --vocab-size 2000 --pattern cl100k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tinylm.util.errors import UsageError  # noqa: E402
from tinylm.tokenizers.bpe import train_bpe  # noqa: E402

PARAGRAPH = """\
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age
of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season
of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair,
we had everything before us, we had nothing before us, we were all going direct to Heaven, we
were all going direct the other way.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description="Train a BPE tokenizer on a text file and show encode/decode.")
    ap.add_argument("file", nargs="?", help="UTF-8 text to train on (default: a built-in paragraph)")
    ap.add_argument("--vocab-size", type=int, default=300, help="ids in all: 4 specials + 256 bytes + merges")
    ap.add_argument("--pattern", default="gpt2", help="pre-split pattern: gpt2, cl100k, or a regex")
    ap.add_argument("--text", default="It was the age of wisdom, it was the season of Light!",
                    help="text to encode with the trained tokenizer")
    args = ap.parse_args()
    corpus = Path(args.file).read_text(encoding="utf-8") if args.file else PARAGRAPH

    try:
        tok = train_bpe(corpus, args.vocab_size, pattern=args.pattern)
    except UsageError as e:  # bad input: one line, exit 2, as the tinylm CLI does
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(tok)
    print("first merges:", [(a.decode(errors="replace"), b.decode(errors="replace")) for a, b in tok.merges[:8]])
    ids = tok.encode(args.text)
    print(f"encode({args.text!r})\n  -> {ids}")
    print("  pieces:", [tok.decode_bytes([i]).decode(errors="replace") for i in ids])
    print(f"  {len(args.text.encode())} bytes -> {len(ids)} tokens")
    print("decode ->", repr(tok.decode(ids)))
    print(f"with allow_special=True: {tok.encode('the end<EOS>', allow_special=True)} (<EOS> is id {tok.eos_id})")


if __name__ == "__main__":
    main()
