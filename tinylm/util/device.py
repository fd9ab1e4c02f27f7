"""Picking the device and numeric settings: CUDA when asked for or available, else CPU."""

from __future__ import annotations

import os

import torch

from .errors import UsageError


def resolve_device(choice: str = "auto") -> torch.device:
    """choice: "auto" (CUDA if available, else CPU), "cpu" or "cuda"."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("CUDA was requested (-g / --device cuda) but no CUDA GPU is visible to PyTorch "
                             f"(torch {torch.__version__}); drop the flag to use the CPU, or install a CUDA build of PyTorch")
        return torch.device("cuda")
    if choice != "auto":
        raise UsageError(f"--device must be auto, cpu or cuda, got {choice!r}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


MAX_THREADS_PER_CORE = 4  # more threads than this only wait on each other; far more crash the OpenMP runtime


def check_threads(threads: int) -> None:
    """--threads: 0 (auto) or 1 .. MAX_THREADS_PER_CORE x the cores here (100000 made OpenMP segfault)."""
    limit = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
    if threads < 0:
        raise UsageError(f"--threads must be 0 (auto) or positive, got {threads}")
    if threads > limit:
        raise UsageError(f"--threads must be at most {limit} ({MAX_THREADS_PER_CORE} per core of this machine), got {threads}")


def configure(device: torch.device) -> None:
    """Global speed settings: TF32 matmuls on CUDA; all cores on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", os.cpu_count() or 1)))


def autocast_dtype(device: torch.device, choice: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `choice` (auto | bf16 | fp32): bf16 on CUDA by default, none on CPU
    (CPU bf16 autocast is slower than fp32 on most CPUs)."""
    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if choice != "auto":
        raise UsageError(f"--dtype must be auto, bf16 or fp32, got {choice!r}")
    return torch.bfloat16 if device.type == "cuda" else None
