"""Is the model copying? How much of what it generates appears verbatim in its training text.

`tinylm eval -m model.model -d train.txt --copying` samples from the model and reports, over the
generated characters: the longest span found verbatim in the training text, and for n = 8, 16 and
32 the fraction of the generated character n-grams (every position counted) that occur in it.

How, for a corpus of any size: the generated text is small and the corpus may be large, so only
the *generated* n-grams are held, as a sorted numpy array of 64-bit hashes; the corpus is streamed
in blocks (decoded as UTF-8 into code points, neighbouring blocks overlapping by n - 1), every
n-gram of a block is hashed with vectorised numpy, and each is looked up in the sorted array with
np.searchsorted: O(corpus x log(sample)) time, memory of a block. The hash of a window is a
polynomial in a random-looking mix of its code points, modulo 2**64, built for any length n by
doubling (h(ab) = h(a) * B**len(b) + h(b)): a handful of array operations per length. Two different
strings share a hash with probability about 2**-64 per pair on ordinary text, so "found" can be
wrong only in theory. The longest span: "some generated span of length L occurs in the corpus" is
monotone in L, so a search over L, several lengths per pass over the corpus, finds it in a few passes.

Knows nothing about models: `copying_report` takes texts and a file; `sample_texts` is the thin
bridge to generate/text.py, and `cmd_copying` the CLI's.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NGRAMS = (8, 16, 32)
BLOCK_BYTES = 1 << 20  # corpus bytes decoded and hashed at a time (each of the ~10 hash arrays is ~8x this)
BASE = 0x9E3779B97F4A7C15 | 1  # odd multiplier of the polynomial hash (mod 2**64)
_U = np.uint64
FILTER_BITS = 22  # a 4 MiB table of which hashes the samples hold (by their top bits)


def _mix(c: np.ndarray) -> np.ndarray:
    """Code points (uint64) -> well-spread 64-bit values (splitmix64's finaliser), so that
    similar characters do not give similar hashes."""
    z = c + _U(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


def code_values(text: str) -> np.ndarray:
    """A string -> its mixed code points, one uint64 per character."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return _mix(cps)


def _join(a: np.ndarray, a_len: int, b: np.ndarray, b_len: int, N: int) -> np.ndarray:
    """Windows of a_len (hashes `a`) followed by windows of b_len (`b`), over a text of N
    characters: h(ab) = h(a) * B**len(b) + h(b), for each of the N - a_len - b_len + 1 starts."""
    m = N - (a_len + b_len) + 1
    return a[:m] * _U(pow(BASE, b_len, 1 << 64)) + b[a_len:a_len + m]


def window_hashes_many(v: np.ndarray, lengths) -> dict[int, np.ndarray]:
    """{n: hashes of every window v[i : i + n], i = 0 .. len(v) - n (uint64)} for each n.
    Windows of 1, 2, 4, ... characters are built once by doubling and shared by every length; each
    n then joins the pieces of its binary form in order (uint64 arithmetic wraps mod 2**64).
    Example: n = 5 = 1 + 4: h5[i] = h1[i] * B**4 + h4[i + 1]."""
    N = len(v)
    want = [n for n in lengths if 1 <= n <= N]
    powers = [v]  # powers[k]: hashes of the windows of 2**k characters
    while want and 2 ** len(powers) <= max(want):
        half = 2 ** (len(powers) - 1)
        powers.append(_join(powers[-1], half, powers[-1], half, N))
    out = {n: np.empty(0, dtype=np.uint64) for n in lengths}
    for n in want:
        acc, acc_len = None, 0
        for k in range(n.bit_length()):
            if n >> k & 1:
                acc, acc_len = (powers[k], 1 << k) if acc is None else (_join(acc, acc_len, powers[k], 1 << k, N), acc_len + (1 << k))
        out[n] = acc
    return out


def window_hashes(v: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every window v[i : i + n] (len(v) - n + 1,); see window_hashes_many."""
    return window_hashes_many(v, [n])[n]


def _corpus_blocks(path: Path, overlap: int):
    """The corpus as mixed code-point arrays, each block starting with the last `overlap`
    characters of the previous one, so every window of up to overlap + 1 characters lies whole
    in some block."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = np.empty(0, dtype=np.uint64)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(BLOCK_BYTES)
            text = decoder.decode(chunk, final=not chunk)
            if text:
                v = np.concatenate([tail, code_values(text)])
                yield v
                tail = v[len(v) - overlap:] if overlap else tail
            if not chunk:
                return


class Queries:
    """The generated texts' windows of one length n: every position's hash (per sample) and the
    sorted distinct hashes, with which of them the corpus holds (`found`)."""

    def __init__(self, samples: list[np.ndarray], n: int):
        self.n = n
        self.per_sample = [window_hashes(v, n) for v in samples]
        self.keys = np.unique(np.concatenate(self.per_sample)) if self.per_sample else np.empty(0, np.uint64)
        self.found = np.zeros(len(self.keys), dtype=bool)
        # a prefilter on the top FILTER_BITS bits of each hash: nearly every corpus window fails
        # one table lookup, and only the few that pass pay for the binary search
        self.table = np.zeros(1 << FILTER_BITS, dtype=bool)
        self.table[self.keys >> _U(64 - FILTER_BITS)] = True

    def mark(self, hashes: np.ndarray) -> None:
        if not len(self.keys) or not len(hashes):
            return
        hashes = hashes[self.table[hashes >> _U(64 - FILTER_BITS)]]
        idx = np.searchsorted(self.keys, hashes)
        idx[idx == len(self.keys)] = 0
        hit = self.keys[idx] == hashes
        self.found[idx[hit]] = True

    def hits(self) -> list[np.ndarray]:
        """Per sample, whether each window position was found in the corpus."""
        return [self.found[np.searchsorted(self.keys, h)] if len(h) else np.zeros(0, bool) for h in self.per_sample]


def scan(corpus: Path, samples: list[np.ndarray], lengths: list[int]) -> dict[int, Queries]:
    """One pass over the corpus: for each length, which generated windows it holds."""
    queries = {n: Queries(samples, n) for n in lengths}
    live = [q for q in queries.values() if len(q.keys)]
    if live:
        for block in _corpus_blocks(corpus, max(q.n for q in live) - 1):
            hashes = window_hashes_many(block, [q.n for q in live])
            for q in live:
                q.mark(hashes[q.n])
    return queries


@dataclass
class CopyReport:
    samples: int
    chars: int  # generated characters, all samples together
    fractions: dict = field(default_factory=dict)  # n -> fraction of generated n-grams found (None: no n-gram)
    counts: dict = field(default_factory=dict)  # n -> (found, total) n-gram positions
    longest: int = 0  # characters of the longest generated span found verbatim in the corpus
    longest_sample: int | None = None  # which sample (0-based) holds it
    longest_text: str = ""
    passes: int = 0  # passes over the corpus it took


def _first_hit(q: Queries, texts: list[str]) -> tuple[int, str]:
    for i, (hit, text) in enumerate(zip(q.hits(), texts)):
        where = np.flatnonzero(hit)
        if len(where):
            return i, text[where[0]:where[0] + q.n]
    raise AssertionError("a length marked found has a hit")


def copying_report(texts: list[str], corpus: str | os.PathLike, ngrams=NGRAMS, probes: int = 4) -> CopyReport:
    """How much of `texts` appears verbatim in the file `corpus` (UTF-8): see the module docstring.
    probes: lengths tested per extra pass while searching for the longest copied span."""
    corpus = Path(corpus)
    samples = [code_values(t) for t in texts]
    rep = CopyReport(samples=len(texts), chars=sum(len(v) for v in samples))
    longest_possible = max((len(v) for v in samples), default=0)
    tested: dict[int, Queries] = scan(corpus, samples, list(ngrams))
    rep.passes = 1
    for n in ngrams:
        q = tested[n]
        hits = np.concatenate(q.hits()) if q.per_sample else np.zeros(0, bool)
        rep.counts[n] = (int(hits.sum()), len(hits))
        rep.fractions[n] = float(hits.mean()) if len(hits) else None
    # the longest span: lo = a length known found (0 = none), hi = a length known absent
    found = [n for n, q in tested.items() if q.found.any()]
    lo = max(found, default=0)
    hi = min([n for n, q in tested.items() if not q.found.any() and n > lo] + [longest_possible + 1])
    while hi - lo > 1:
        step = (hi - lo) / (probes + 1)
        lengths = sorted({min(hi - 1, max(lo + 1, round(lo + step * (j + 1)))) for j in range(probes)})
        got = scan(corpus, samples, lengths)
        rep.passes += 1
        tested.update(got)
        for n in lengths:
            if got[n].found.any():
                lo = max(lo, n)
            else:
                hi = min(hi, n)
    if lo:
        rep.longest = lo
        rep.longest_sample, rep.longest_text = _first_hit(tested[lo], texts)
    return rep


def report_text(rep: CopyReport, corpus: str, what: str) -> str:
    """The lines `tinylm eval --copying` prints."""
    lines = [f"copying: {what}, {rep.chars:,} characters generated, compared with {corpus}"]
    if rep.longest:
        shown = rep.longest_text if len(rep.longest_text) <= 120 else rep.longest_text[:117] + "..."
        lines.append(f"longest copied span: {rep.longest:,} characters (sample {rep.longest_sample + 1}): {shown!r}")
    else:
        lines.append("longest copied span: 0 characters (no generated character occurs in the text)")
    for n in sorted(rep.fractions):
        frac, (hit, total) = rep.fractions[n], rep.counts[n]
        value = "n/a (samples shorter than n)" if frac is None else f"{100 * frac:.1f}% ({hit:,} of {total:,})"
        lines.append(f"{n}-character n-grams found verbatim: {value}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command line


def add_copying_args(p) -> None:
    """The flags `tinylm eval` takes for --copying."""
    g = p.add_argument_group("copying measure (--copying)")
    g.add_argument("--copying", action="store_true",
                   help="instead of the loss, sample from the model and report how much of its output appears verbatim "
                        "in -d (the training text): the longest copied span, and the fraction of generated 8-, 16- and "
                        "32-character n-grams found in it")
    g.add_argument("--samples", type=int, default=8, help="--copying: samples to generate (default 8)")
    g.add_argument("--length", type=int, default=512, help="--copying: tokens per sample (default 512)")
    g.add_argument("--seed", type=int, default=0, help="--copying: sampling seed; sample i uses seed + i (default 0)")
    g.add_argument("--temperature", type=float, default=1.0, help="--copying: sampling temperature (default 1.0: "
                   "the model's own distribution)")
    g.add_argument("--prompt", default="\n", help="--copying: text every sample continues (default: a newline)")


MAX_SAMPLES = 4096
MAX_LENGTH = 1_000_000


def check_copying_args(args) -> None:
    from ..util.errors import UsageError  # noqa: PLC0415

    if not 1 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be in [1, {MAX_SAMPLES}], got {args.samples}")
    if not 1 <= args.length <= MAX_LENGTH:
        raise UsageError(f"--length must be in [1, {MAX_LENGTH:,}] tokens, got {args.length}")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    if not (args.temperature >= 0 and args.temperature < float("inf")):
        raise UsageError(f"--temperature must be a finite number >= 0, got {args.temperature}")


def sample_texts(model, tokenizer, prompt: str, samples: int, length: int, seed: int, temperature: float) -> list[str]:
    from ..generate.engine import SamplingConfig  # noqa: PLC0415
    from ..generate.text import generate_texts  # noqa: PLC0415

    cfg = SamplingConfig(max_new_tokens=length, temperature=temperature, seed=seed)
    return generate_texts(model, tokenizer, prompt, cfg, samples, unknown="replace")


def cmd_copying(args) -> int:
    import sys  # noqa: PLC0415

    from ..data.tokenfile import scan_text  # noqa: PLC0415
    from ..generate.text import write_out  # noqa: PLC0415
    from ..model.files import load_model  # noqa: PLC0415
    from ..util.device import resolve_device  # noqa: PLC0415

    check_copying_args(args)
    scan_text(args.dataset)  # exists, readable, UTF-8 text: the data checks every command shares
    loaded = load_model(args.model, resolve_device(args.device))
    texts = sample_texts(loaded.model, loaded.tokenizer, args.prompt, args.samples, args.length, args.seed, args.temperature)
    rep = copying_report(texts, args.dataset)
    what = f"{args.samples} sample(s) of {args.length} tokens (seed {args.seed}, temperature {args.temperature:g})"
    write_out(sys.stdout, report_text(rep, args.dataset, what))
    return 0
