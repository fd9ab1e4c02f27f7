"""Token streams kept in their stored dtype, their train/validation split, and batch gathering.

`token_file` (data/tokenfile.py) gives a read-only uint16/uint32 memmap of ids. `TokenWindows` wraps
such a stream (or its copy on a GPU) and hands out int64 windows, which is all `ChunkBatches`,
`eval_windows` and `Trainer` use of a token tensor; `split_memmap` cuts one into a
`data.TokenSplit` without reading it.

On a GPU. Trainer calls `split.train.to(device)`. `TokenWindows.to` copies the ids (still
uint16/uint32, a quarter or half of int64) to the GPU when they fit in a share of its free
memory, and ChunkBatches then draws every window there with no host work. When they do not
fit, the stream stays a memmap on the host, windows are gathered on the CPU, and the Trainer
copies them over. `gather_batch` is the version of that gather which overlaps the copy with
compute: it writes inputs and targets into page-locked (pinned) memory, so
`x.to("cuda", non_blocking=True)` returns at once and the transfer runs while the GPU works.

This module neither reads text nor tokenizes (data/tokenfile.py does).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .batches import TokenSplit, split_tokens

DEVICE_SHARE = 0.25  # a stream goes to the GPU only if it takes at most this share of free memory:
# the rest is for optimizer state and activations, which are allocated later, on the first step


class TokenWindows:
    """A 1-D token stream kept in its stored dtype (a view of a uint16/uint32 memmap, or a copy of
    it on a GPU) that hands out int64 ids: `stream[idx]` with an index tensor or a slice returns
    a new int64 tensor. Implements what the training code uses of a token tensor: len(),
    `.device`, `.to(device)` and indexing.

    subtle: ids are indexed through a signed view of the same bytes (uint16 as int16, uint32 as
    int32), which every device can gather, then widened and masked back to unsigned values. The
    memmap is read-only, so this class never exposes the view for writing."""

    def __init__(self, ids: np.ndarray | torch.Tensor):
        if isinstance(ids, np.ndarray):
            ids = _signed_tensor(ids)
        elif ids.dtype in (torch.uint16, torch.uint32):
            ids = ids.view(torch.int16 if ids.dtype == torch.uint16 else torch.int32)
        self.ids = ids  # (N,) int16 / int32 / int64
        self.mask = {torch.int16: 0xFFFF, torch.int32: 0xFFFFFFFF}.get(ids.dtype)  # None: int64, no mask

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def device(self) -> torch.device:
        return self.ids.device

    @property
    def nbytes(self) -> int:
        return self.ids.numel() * self.ids.element_size()

    def __getitem__(self, key) -> torch.Tensor:
        out = self.ids[key].to(torch.int64, copy=True)
        if self.mask is not None:
            out &= self.mask
        return out

    def to(self, device: torch.device | str) -> "TokenWindows":
        """On the GPU when the stream fits (see DEVICE_SHARE), else this same host-side stream."""
        device = torch.device(device)
        here = self.ids.device
        if device.type == here.type and device.index in (None, here.index):
            return self
        if device.type == "cpu" or _fits_on(device, self.nbytes):
            return TokenWindows(self.ids.to(device))
        return self


def _signed_tensor(ids: np.ndarray) -> torch.Tensor:
    """A torch view of a 1-D id array that shares its memory (no copy, also for a memmap)."""
    signed = {np.dtype(np.uint16): np.int16, np.dtype(np.uint32): np.int32}.get(ids.dtype)
    arr = ids.view(signed) if signed is not None else ids
    with warnings.catch_warnings():
        # a read-only memmap: torch warns that writes would fail; TokenWindows only reads
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= DEVICE_SHARE * free
    return True  # other accelerators (mps) report no free memory; keep the old behaviour


def split_memmap(ids: np.ndarray, val_fraction: float, context: int, source: str = "dataset") -> TokenSplit:
    """`data.split_tokens` for a memmap: the first (1 - val_fraction) of the ids for training, the
    rest for validation, as TokenWindows that share memory with `ids` (nothing is read yet)."""
    # subtle: run split_tokens itself on a stand-in of the same length (one zero broadcast to N
    # elements, no memory), so the checks and their wording live in one place.
    stand_in = torch.zeros((), dtype=torch.long).expand(len(ids))
    n_train = len(split_tokens(stand_in, val_fraction, context, source).train)
    return TokenSplit(TokenWindows(ids[:n_train]), TokenWindows(ids[n_train:]))


def gather_batch(tokens: TokenWindows | np.ndarray | torch.Tensor, starts: torch.Tensor, T: int,
                 pin: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[s : s + T] and targets tokens[s + 1 : s + T + 1] for each s in `starts` (B,),
    as int64 (B, T) tensors on the stream's device.

    For a host-side stream `pin` (default: whenever CUDA is available) puts x and y, each
    contiguous, in page-locked memory: then `x.to("cuda", non_blocking=True)` is a true
    asynchronous copy, and the next batch can be gathered while the GPU trains on this one.
    (A non-contiguous or pageable source makes that copy synchronous.)"""
    stream = tokens if isinstance(tokens, TokenWindows) else TokenWindows(tokens)
    dev = stream.device
    idx = starts.to(dev, torch.int64)[:, None] + torch.arange(T + 1, device=dev)  # (B, T + 1)
    window = stream[idx]  # (B, T + 1) int64
    if pin is None:
        pin = dev.type == "cpu" and torch.cuda.is_available()
    if not pin:
        return window[:, :-1], window[:, 1:]
    x = torch.empty((len(idx), T), dtype=torch.int64, pin_memory=True)  # (B, T)
    y = torch.empty((len(idx), T), dtype=torch.int64, pin_memory=True)  # (B, T)
    x.copy_(window[:, :-1])
    y.copy_(window[:, 1:])
    return x, y
