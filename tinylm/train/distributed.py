"""Data-parallel training over several processes started by torchrun (one per GPU, or CPU processes).

    torchrun --nproc_per_node=2 -m tinylm train -d book.txt -o models/book.model

Every process holds the whole model and trains on its own share of each step's batches (data/batches.py
`ChunkBatches` hands process r every world-th batch), so one optimizer step sees `world` times
the batch. After the backward pass the gradients and the loss are averaged over the processes
with one all-reduce, so every process takes the same clipped AdamW step from the same averaged
gradient and the weights stay identical everywhere, as with PyTorch's DistributedDataParallel.
Unlike DDP's buckets, the all-reduce is not overlapped with the backward pass; in exchange it is
one plain collective at one place in the step, which a CUDA graph can record and torch.compile
never sees. Measured so far: with one process the path costs 0.97 ms of a 25.3 ms GPT-2 124M step
on an H200 (the copy into one buffer and back; bench/RESULTS.md); the collective between several
GPUs has not been measured here.

This module owns the process group and the few collectives the trainer uses; it knows nothing
about models, data or files. Without torchrun's variables (RANK, WORLD_SIZE) nothing here runs
and training is a single process, as always.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from ..util.device import resolve_device
from ..util.errors import UsageError


def launched() -> bool:
    """Whether this process was started by torchrun (which sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise UsageError(f"{name} is not set; start data-parallel training with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number; start data-parallel training with torchrun") from None


@dataclass
class Dist:
    """This process's place in the group and the collectives over it. Every method (not the
    `main` property) is a collective: all processes must call it, in the same order."""

    rank: int  # 0 .. world - 1; process 0 logs and writes the files
    world: int  # processes in all
    local_rank: int  # index among this machine's processes = its GPU
    device: torch.device  # where this process trains (cuda:<local_rank>, or cpu)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the processes, in one all-reduce per dtype: the
        tensors are copied into one flat buffer, summed across processes, divided, copied back."""
        import torch.distributed as dist  # noqa: PLC0415

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])  # (sum of numels,)
            dist.all_reduce(flat)
            flat /= self.world
            torch._foreach_copy_(group, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in group]), group)])

    def average_gradients_(self, params, loss_sum: torch.Tensor) -> None:
        """After the backward pass: every process's gradients and summed loss become the means
        over all processes, so every process takes the same optimizer step (and skips the same
        non-finite ones: a NaN anywhere is a NaN everywhere). A parameter without a gradient gets
        zeros, so that every process sends the same tensors."""
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.average_([p.grad for p in params] + [loss_sum])

    def max_(self, values: list[float]) -> list[float]:
        """Element-wise maximum of `values` over the processes (a host sync); for flags, an OR."""
        import torch.distributed as dist  # noqa: PLC0415

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over the processes, in place (and returned)."""
        import torch.distributed as dist  # noqa: PLC0415

        dist.all_reduce(t)
        return t

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor with process 0's (so every process starts from the same weights)."""
        import torch.distributed as dist  # noqa: PLC0415

        for t in tensors:
            dist.broadcast(t.data, src=0)

    def gather_objects(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process (pickled between our own
        processes; nothing read from a file)."""
        import torch.distributed as dist  # noqa: PLC0415

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist  # noqa: PLC0415

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Process 0 runs the block first (e.g. writes a cache file), the others after it."""
        if not self.main:
            self.barrier()
        try:
            yield
        finally:
            if self.main:
                self.barrier()


def setup(device_choice: str = "auto") -> Dist | None:
    """Join the process group torchrun started (None when not started by torchrun): NCCL with
    one GPU per process when training on CUDA, gloo on the CPU. Checks that there is a GPU for
    every process on this machine before joining, so a mistake is one clear error, not a hang."""
    if not launched():
        return None
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank, local_world = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world)
    device = resolve_device(device_choice)
    import torch.distributed as dist  # noqa: PLC0415 - only data-parallel runs pay for the import

    if device.type == "cuda":
        n = torch.cuda.device_count()
        if local_world > n:
            raise UsageError(f"torchrun started {local_world} processes on this machine but PyTorch sees {n} CUDA GPU(s); "
                             f"use --nproc_per_node {n} (one GPU per process), or add -c / --device cpu to train on CPU processes")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", rank=rank, world_size=world)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return Dist(rank, world, local_rank, device)


def shutdown(d: Dist | None) -> None:
    if d is not None:
        import torch.distributed as dist  # noqa: PLC0415

        if dist.is_initialized():
            dist.destroy_process_group()

