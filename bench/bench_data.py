"""Benchmark for token files (tinylm/tokenfile.py): tokenization throughput and peak memory.

    .venv/bin/python bench/bench_data.py [--mb 50] [--bpe-vocab 2048] [--workdir DIR]

The corpus is synthetic but varied: ../shared/data/tinyshakespeare.txt once, then its lines
shuffled (seeded) and appended, pass after pass, until it reaches --mb megabytes. It is written
to --workdir (default: a temporary folder, removed afterwards), so it sits in the page cache:
the numbers are CPU cost, not disk speed. The BPE tokenizer (GPT-2 pattern, --bpe-vocab ids) is
trained on tiny Shakespeare alone.

Each measurement runs in a fresh subprocess so its peak RSS (getrusage ru_maxrss) is its own:
  cold      scan_text (hash, size, characters) + token_file into an empty cache
  warm      the same again: scan_text, then the cached file is mapped
  in-memory the old path for comparison: read_text + tokenizer.encode + an int64 tensor
MB/s is text megabytes (1e6 bytes) per second of the whole measurement; "import RSS" is the
child's RSS before it starts, so the growth is what the data path costs. The warm run also times
random (64, 256) batches gathered from the memmap with gather_batch.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_corpus(path: Path, mb: int, seed: int = 0) -> int:
    """tiny Shakespeare, then shuffled copies of its lines until `mb` megabytes; returns bytes."""
    base = SHAKESPEARE.read_text(encoding="utf-8")
    lines = base.splitlines(keepends=True)
    rng = random.Random(seed)
    size = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(base)
        size += len(base.encode("utf-8"))
        while size < mb * 1_000_000:
            rng.shuffle(lines)
            chunk = "".join(lines)
            f.write(chunk)
            size += len(chunk.encode("utf-8"))
    return size


def child(mode: str, kind: str, corpus: Path, tok_file: Path) -> dict:
    """One measurement, in this (fresh) process; prints a JSON line."""
    import torch  # noqa: PLC0415 - imported here so the parent stays light

    from tinylm.data.batches import read_text  # noqa: PLC0415
    from tinylm.data.tokenfile import scan_text, token_file  # noqa: PLC0415
    from tinylm.data.tokenstream import gather_batch, split_memmap  # noqa: PLC0415
    from tinylm.tokenizers import CharTokenizer  # noqa: PLC0415
    from tinylm.tokenizers.bpe import BPETokenizer  # noqa: PLC0415

    bpe = BPETokenizer.load(tok_file) if kind == "bpe" else None
    import_rss = peak_rss_mb()
    t0 = time.perf_counter()
    out = {"mode": mode, "kind": kind, "import_rss": import_rss}
    if mode == "in-memory":
        text = read_text(corpus)
        tok = bpe or CharTokenizer.train(text)
        n = len(torch.as_tensor(tok.encode(text), dtype=torch.long))
        out.update(scan_s=0.0, tokens=n)
    else:
        info = scan_text(corpus)
        out["scan_s"] = time.perf_counter() - t0
        tok = bpe or CharTokenizer(sorted(info.chars))
        ids = token_file(corpus, tok, info, progress=False)
        out.update(tokens=len(ids), dtype=str(ids.dtype))
    out["total_s"] = time.perf_counter() - t0
    out["peak_rss"] = peak_rss_mb()
    if mode == "warm":  # random windows straight from the memmap
        train = split_memmap(ids, 0.1, 256).train
        g = torch.Generator().manual_seed(0)
        gather_batch(train, torch.zeros(64, dtype=torch.long), 256)  # warm-up: first-call costs
        t1 = time.perf_counter()
        for _ in range(200):
            gather_batch(train, torch.randint(0, len(train) - 257, (64,), generator=g), 256)
        out["batches_per_s"] = 200 / (time.perf_counter() - t1)
    return out


def run_child(mode: str, kind: str, corpus: Path, tok_file: Path, cache: Path) -> dict:
    env = {"TINYLM_CACHE": str(cache), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, __file__, "--child", mode, kind, str(corpus), str(tok_file)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50, help="corpus size in megabytes (1e6 bytes)")
    ap.add_argument("--bpe-vocab", type=int, default=2048, help="vocabulary size of the BPE tokenizer trained for the run")
    ap.add_argument("--workdir", type=Path, default=None, help="where the corpus and cache go (default: a temp folder, removed)")
    ap.add_argument("--no-in-memory", action="store_true", help="skip the read_text + encode comparison rows")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "KIND", "CORPUS", "TOKENIZER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, kind, corpus, tok_file = args.child
        print(json.dumps(child(mode, kind, Path(corpus), Path(tok_file))))
        return

    from tinylm.tokenizers.bpe import train_bpe  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus, tok_file, cache = work / "corpus.txt", work / "bpe.json", work / "cache"
        nbytes = make_corpus(corpus, args.mb)
        train_bpe(SHAKESPEARE.read_text(encoding="utf-8"), args.bpe_vocab, progress=False).save(tok_file)
        print(f"corpus: {corpus.name}, {nbytes / 1e6:.1f} MB = tiny Shakespeare + seeded shuffles of its lines; "
              f"BPE: GPT-2 pattern, {args.bpe_vocab} ids, trained on tiny Shakespeare")
        rows = []
        for kind in ("char", "bpe"):
            modes = ["cold", "warm"] + ([] if args.no_in_memory else ["in-memory"])
            rows += [run_child(m, kind, corpus, tok_file, cache) for m in modes]
    print(f"{'tokenizer':9} {'run':9} {'tokens':>11} {'dtype':6} {'scan s':>7} {'total s':>8} {'MB/s':>7} "
          f"{'import RSS':>10} {'peak RSS':>9} {'batches/s':>9}")
    for r in rows:
        bps = f"{r['batches_per_s']:.0f}" if "batches_per_s" in r else "-"
        print(f"{r['kind']:9} {r['mode']:9} {r['tokens']:>11,} {r.get('dtype', 'int64'):6} {r['scan_s']:>7.2f} "
              f"{r['total_s']:>8.2f} {nbytes / 1e6 / r['total_s']:>7.1f} {r['import_rss']:>8.0f}MB {r['peak_rss']:>7.0f}MB {bps:>9}")


if __name__ == "__main__":
    main()
