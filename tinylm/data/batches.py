"""Text -> token ids -> training batches and validation windows.

Owns reading a user's text file (with the checks that turn bad files into clear errors), the
train/validation split, and the two ways of cutting a token stream into model inputs:
`ChunkBatches` (epochs over non-overlapping context-sized chunks, seed 000) and
`eval_windows` (every validation token exactly once, batch by batch, also from a memmap). It
knows nothing about models.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..util.errors import UsageError


def check_regular_file(p: Path, what: str, flag: str) -> int:
    """The size of `p`, a regular file; else a UsageError. A FIFO, /dev/fd/N of a process
    substitution or a device (/dev/zero) could block, be read only once, or never end."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"{what} {p} does not exist; check the path given to {flag}") from None
    except OSError as e:
        raise UsageError(f"{what} {p} cannot be opened ({e.strerror or e}); check the path given to {flag}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {p} is a directory; pass a {'text' if what == 'dataset' else 'regular'} file to {flag}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a pipe (FIFO or process substitution)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket or other special file")
        raise UsageError(f"{what} {p} is {kind}, not a regular file; save it to a file first and pass that to {flag}")
    return st.st_size


# The ways a dataset can be unreadable, worded once: read_text here and tokenfile.py's streaming
# reader raise the same errors for the same file.
def unreadable(p: Path, e: OSError) -> UsageError:
    if isinstance(e, PermissionError):
        return UsageError(f"dataset {p} cannot be read (permission denied); fix its permissions (chmod +r) or copy it")
    return UsageError(f"dataset {p} cannot be read ({e.strerror or e}); check the file")


def empty_text(p: Path) -> UsageError:
    return UsageError(f"dataset {p} is empty; give a text file with some text in it")


def binary_text(p: Path) -> UsageError:
    return UsageError(f"dataset {p} looks binary (it contains NUL bytes); pass a plain UTF-8 text file")


def not_utf8(p: Path, byte: int, offset: int) -> UsageError:
    return UsageError(f"dataset {p} is not UTF-8 text (byte 0x{byte:02x} at offset {offset}); "
                      f"convert it first, e.g. iconv -f LATIN2 -t UTF-8 {p} > {p.stem}.utf8.txt")


def read_text(path: str | os.PathLike, flag: str = "-d/--dataset") -> str:
    """Read a UTF-8 text file, turning every way it can be unusable into a UsageError."""
    p = Path(path)
    check_regular_file(p, "dataset", flag)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise unreadable(p, e) from None
    if not data.strip():
        raise empty_text(p)
    if b"\x00" in data:  # anywhere: a NUL past the first MiB is as binary as one before it
        raise binary_text(p)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(p, data[e.start], e.start) from None


@dataclass
class TokenSplit:
    train: torch.Tensor  # (N_train,) int64 token ids
    val: torch.Tensor  # (N_val,) int64 token ids


def split_tokens(ids: list[int] | torch.Tensor, val_fraction: float, context: int, source: str = "dataset") -> TokenSplit:
    """First (1 - val_fraction) of the tokens for training, the rest for validation. Both parts
    must hold at least one window of context + 1 tokens (val may be empty if val_fraction is 0)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n_val = int(len(ids) * val_fraction)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    need = context + 1
    if len(train) < need:
        raise UsageError(f"{source} has {len(ids)} tokens, {len(train)} for training, but one training window needs "
                         f"context + 1 = {need}; give more text or a smaller --context")
    if val_fraction > 0 and len(val) < 2:
        raise UsageError(f"{source} leaves only {len(val)} validation tokens with --val-fraction {val_fraction}; "
                         "give more text or a larger --val-fraction (0 = no validation)")
    return TokenSplit(train, val)


class ChunkBatches:
    """Epochs over the token stream cut into non-overlapping windows of `context` inputs (+1 for
    the shifted targets). Each epoch starts the cut at a random offset and shuffles the windows,
    so successive epochs see different boundaries. Batches are full-sized (a partial last batch
    is dropped) so every step has the same shape; a stream too short for one full batch gives
    one smaller batch per epoch. Deterministic given (seed, epoch).

    Data parallelism (train/distributed.py): with `world` processes, every process shuffles the same
    way and process `rank` takes batches rank, rank + world, rank + 2 world, ... of the epoch, so
    the processes' batches of one step together are the batch of a single process with a `world`
    times larger batch size. e.g. world 2: process 0 gets batches 0, 2, 4, process 1 gets 1, 3, 5."""

    def __init__(self, tokens: torch.Tensor, context: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.tokens, self.context, self.batch_size, self.seed = tokens, context, batch_size, seed
        self.rank, self.world = rank, world
        if world > 1 and self.batches_in_epoch < world:
            raise UsageError(f"the training text makes {self.batches_in_epoch} batch(es) of --batch-size {batch_size} per epoch, "
                             f"fewer than the {world} processes; give more text, a smaller --batch-size, or fewer processes")

    @property
    def num_chunks(self) -> int:
        return (len(self.tokens) - 1) // self.context

    @property
    def batches_in_epoch(self) -> int:
        """Batches in one epoch, all processes together."""
        return max(1, self.num_chunks // self.batch_size)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this process draws per epoch (the leftover batches, fewer than `world`, go unused)."""
        return self.batches_in_epoch // self.world

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) pairs, each (B, T), for epoch number `epoch`, skipping this process's first `skip`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        T = self.context
        max_offset = len(self.tokens) - 1 - self.num_chunks * T  # slack left after the chunks
        offset = int(torch.randint(0, max_offset + 1, (1,), generator=g))
        dev = self.tokens.device
        starts = (offset + T * torch.randperm(self.num_chunks, generator=g)).to(dev)  # (num_chunks,)
        B = min(self.batch_size, self.num_chunks)
        rows = torch.arange(T + 1, device=dev)  # (T + 1,)
        for i in range(skip, self.batches_per_epoch):
            b = i * self.world + self.rank  # this process's i-th batch of the epoch
            idx = starts[b * B:(b + 1) * B, None] + rows  # (B, T + 1)
            chunk = self.tokens[idx]  # (B, T + 1)
            yield chunk[:, :-1], chunk[:, 1:]


def eval_windows(tokens: torch.Tensor | np.ndarray, context: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cover every token of `tokens` after the first exactly once as a target: consecutive
    windows of `context` inputs, the last one padded (inputs 0, targets -1 = ignored). Every
    batch is (batch_size, context) so the eval step keeps one shape.

    `tokens` is an int64 tensor, a `tokenstream.TokenWindows`, or a 1-D numpy array such as a
    token-file memmap; each batch reads only its own ids, so nothing the size of the stream is
    built. e.g. 10 tokens, context 4, batch 2: targets 1..9 go to windows [1-4] [5-8] [9 + 3
    pads] and a fully padded fourth, in batches of two windows."""
    T, B = context, batch_size
    n_targets = len(tokens) - 1
    n_windows = (n_targets + T - 1) // T
    dev = torch.device("cpu") if isinstance(tokens, np.ndarray) else tokens.device
    for lo in range(0, n_windows * T, B * T):  # lo: the first target of this batch
        n = min(B * T, n_targets - lo)  # real targets in it; the rest is padding
        x = torch.zeros(B * T, dtype=torch.long, device=dev)
        y = torch.full((B * T,), -1, dtype=torch.long, device=dev)
        x[:n] = _long_ids(tokens, lo, lo + n)
        y[:n] = _long_ids(tokens, lo + 1, lo + n + 1)
        yield x.view(B, T), y.view(B, T)


def _long_ids(tokens: torch.Tensor | np.ndarray, lo: int, hi: int) -> torch.Tensor:
    """tokens[lo:hi] as an int64 tensor (a numpy memmap of uint16 ids is widened as it is read)."""
    part = tokens[lo:hi]
    return torch.from_numpy(part.astype(np.int64)) if isinstance(part, np.ndarray) else part
