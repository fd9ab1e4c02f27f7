"""Learning byte-level BPE merges from a corpus (Sennrich et al. 2016, with GPT-2's byte variant).

This module owns the training algorithm only: text in, a list of merged token byte strings out.
It knows nothing about special tokens, token ids as the model sees them, files, or encoding
text with the result; `bpe.train_bpe` wraps it into a `BPETokenizer`. The text may come in
pieces (`count_words` takes an iterable), which is how `tokenfile.train_bpe_file` trains on a
file larger than memory: only the chunk counts are kept, never the text.

The naive algorithm recounts every pair of the whole corpus after each merge. This one is
incremental, which is ~100x faster:
1. pre-split the text with the pattern and count each distinct chunk once ("words"), so the
   corpus becomes e.g. 80k words with frequencies instead of 1M chunks;
2. count every adjacent pair of tokens, weighted by word frequency, and index each pair to the
   words that hold it;
3. repeatedly pop the most frequent pair from a heap, merge it inside only the words the index
   names, and adjust the counts of just the pairs around each merged occurrence.

Heap entries are never removed when a count changes (lazy deletion). Invariant: every live pair
has an entry whose count is at least its true count, because a merge lowers counts in place and
gives each pair it raises (always one holding the merged token) a fresh entry. So a popped entry
whose count is still true beats every other pair; a stale one is pushed back with its true count.

Tie rule (documented, deterministic): the pair with the highest count wins; among equal counts,
the pair whose (left bytes, right bytes) is lexicographically smallest, e.g. (b"a", b"b") before
(b"aa", b"a") before (b"b", b"a").

Internal token ids here are 0..255 for the raw bytes and 256, 257, ... for merged tokens; the
tokenizer shifts them to leave room for special tokens.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import Counter, defaultdict
from typing import Callable, Iterable

import regex

ProgressFn = Callable[[int, int], None]  # (merges done, merges wanted) -> None


def count_words(text: str | Iterable[str], pattern: str) -> dict[bytes, int]:
    """Pre-split `text` and count each distinct chunk, as UTF-8 bytes, in order of first
    appearance. `text` may be an iterable of pieces that join to the text; then the counts are
    those of the joined text only if no chunk of it straddles two pieces (the caller cuts
    where the pattern cannot match across: see tokenfile._last_safe_cut).

    >>> count_words("the cat the", r" ?\\w+")
    {b'the': 1, b' cat': 1, b' the': 1}
    >>> count_words(["the cat", " the"], r" ?\\w+")
    {b'the': 1, b' cat': 1, b' the': 1}
    """
    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()  # chunk -> occurrences; only distinct chunks are held
    for piece in [text] if isinstance(text, str) else text:
        counts.update(split(piece))
    return {chunk.encode("utf-8"): n for chunk, n in counts.items()}


def learn_merges(words: dict[bytes, int], n_merges: int, progress: ProgressFn | None = None) -> list[tuple[bytes, bytes]]:
    """Learn up to `n_merges` new tokens from word counts; returns the (left, right) byte pair
    of each, in merge order: new token i is left + right and has internal id 256 + i.

    Returns fewer when every word has become a single token (the caller decides if that is an
    error).
    >>> learn_merges({b"aaabdaaabac": 1}, 3)
    [(b'a', b'a'), (b'a', b'b'), (b'aa', b'ab')]
    """
    vocab = [bytes([i]) for i in range(256)]  # internal id -> token bytes
    vocab_ids = {b: i for i, b in enumerate(vocab)}  # token bytes -> internal id
    seqs = [list(w) for w in words if len(w) > 1]  # word index -> its current token ids
    freqs = [words[w] for w in words if len(w) > 1]  # word index -> how often the word occurs
    counts, where = _count_pairs(seqs, freqs)
    heap = [_entry(c, p, vocab) for p, c in counts.items()]
    heapq.heapify(heap)
    new_tokens: list[tuple[bytes, bytes]] = []
    while len(new_tokens) < n_merges:
        pair = _pop_best(heap, counts)
        if pair is None:
            break  # no pair left: every word is one token
        merged = vocab[pair[0]] + vocab[pair[1]]
        z = vocab_ids.get(merged)
        if z is None:
            z = vocab_ids[merged] = len(vocab)
            vocab.append(merged)
            new_tokens.append((vocab[pair[0]], vocab[pair[1]]))
            if progress is not None:
                progress(len(new_tokens), n_merges)
        # subtle: should `merged` already be a token (made as (ab, c), now offered as (a, bc);
        # rare, as left-to-right merging keeps segmentations consistent), the words are still
        # rewritten to use it, but the vocabulary does not grow.
        grown = _apply_merge(pair, z, seqs, freqs, counts, where)
        for p in grown:
            heapq.heappush(heap, _entry(counts[p], p, vocab))
    return new_tokens


def _count_pairs(seqs: list[list[int]], freqs: list[int]) -> tuple[dict, dict]:
    """Weighted pair counts and the pair -> words index, both defaultdicts so that merges can
    add to them directly (subtle: so read a count that may be absent with .get, not [ ]).

    >>> counts, where = _count_pairs([[1, 2, 1, 2]], [5])
    >>> dict(counts), dict(where)
    ({(1, 2): 10, (2, 1): 5}, {(1, 2): {0}, (2, 1): {0}})
    """
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> weighted count
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words holding it
    for w, seq in enumerate(seqs):
        f = freqs[w]
        for pair in zip(seq, seq[1:]):
            counts[pair] += f
            where[pair].add(w)
    return counts, where


def _entry(count: int, pair: tuple[int, int], vocab: list[bytes]) -> tuple:
    """Heap entry: heapq pops the smallest, so the count is negated; bytes break ties."""
    return (-count, vocab[pair[0]], vocab[pair[1]], pair)


def _pop_best(heap: list, counts: dict) -> tuple[int, int] | None:
    """Pop entries until one holds its pair's true count (lazy deletion); None if none left."""
    while heap:
        neg, left, right, pair = heapq.heappop(heap)
        true = counts.get(pair, 0)  # .get: don't plant a 0 in the defaultdict
        if true == -neg:
            return pair
        if true > 0:  # stale but alive: put it back where it belongs now
            heapq.heappush(heap, (-true, left, right, pair))
    return None


def _apply_merge(pair, z, seqs, freqs, counts, where) -> set[tuple[int, int]]:
    """Replace `pair` by token `z` in every word the index names; update counts and index.

    Only the neighbours of each merged occurrence change: in x a b y -> x z y the pairs
    (x, a) and (b, y) lose the word's frequency and (x, z), (z, y) gain it. Returns the pairs
    whose count grew (they need a heap entry).
    e.g. seq [7, 1, 2, 1, 2, 9], pair (1, 2), z 300 -> [7, 300, 300, 9]; (7,1), (2,1), (2,9)
    drop, (7,300), (300,300), (300,9) appear; (300,1) goes +1 then -1 and nets zero.
    """
    a, b = pair
    grown: set[tuple[int, int]] = set()
    for w in where.pop(pair, ()):
        seq = seqs[w]
        found = _occurrences(seq, a, b)
        if not found:
            continue  # subtle: the index is never pruned, so it may name words that lost the pair
        f = freqs[w]
        for k, i in enumerate(found):
            i -= k  # each earlier merge in this word shortened it by one
            seq[i] = z
            del seq[i + 1]  # in place: words are short, so the shift is cheap
            if i > 0:  # left neighbour; may be a z placed by the previous occurrence
                x = seq[i - 1]
                counts[x, a] -= f
                p = (x, z)
                counts[p] += f
                where[p].add(w)
                grown.add(p)
            if i + 1 < len(seq):  # right neighbour, still unmerged
                y = seq[i + 1]
                counts[b, y] -= f
                p = (z, y)
                counts[p] += f
                where[p].add(w)
                grown.add(p)
    counts.pop(pair, None)
    grown.discard(pair)
    return {p for p in grown if counts[p] > 0}


def _occurrences(seq: list[int], a: int, b: int) -> list[int]:
    """Start of each non-overlapping (a, b) in `seq`, left to right.

    >>> _occurrences([5, 1, 2, 1, 1, 2], 1, 2), _occurrences([3, 3, 3], 3, 3)
    ([1, 4], [0])
    """
    left = seq.count(a)  # how many a's remain to look at; list.count and .index scan in C
    n = len(seq)
    found: list[int] = []
    i = -1
    while left:
        i = seq.index(a, i + 1)
        left -= 1
        if i + 1 < n and seq[i + 1] == b:
            found.append(i)
            i += 1  # skip b so pairs never overlap
            left -= a == b  # that b was one of the a's
    return found


class ProgressBar:
    """A one-line merge counter on stderr, drawn only when stderr is a terminal."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return  # redraw at most 10x a second
        self.last = now
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done >= total else ""
        self.stream.write(f"\rBPE merges [{bar}] {done}/{total} {now - self.t0:.1f}s{end}")
        self.stream.flush()
