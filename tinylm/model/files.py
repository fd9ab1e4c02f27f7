"""The model file: weights, model config, tokenizer and training metadata in one safetensors file.

Format: a safetensors file whose string metadata holds
    "format": "tinylm-model-1", "model_config": JSON, "tokenizer": JSON, "meta": JSON.
safetensors stores raw tensors and a JSON header, so loading never runs code (unlike pickle).
Files are written atomically (temp file in the same folder, fsync, rename) so an interrupted
save leaves the previous file intact. Loading reads only the safetensors header and raw tensor
bytes, so a file crafted to run code (a pickle) is refused as "not a usable tinylm model file".
This module does not know how training works; the resumable training state (optimizer, RNGs,
position in the data) is not part of the model file but of a checkpoint (train/state.py).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..util.errors import UsageError
from ..util.files import atomic_write_bytes  # noqa: F401 - re-exported
from .gpt import GPT, GPTConfig
from ..tokenizers import Tokenizer, from_dict

FORMAT = "tinylm-model-1"


def model_file_bytes(state: dict[str, torch.Tensor], cfg: GPTConfig, tokenizer: Tokenizer, meta: dict | None = None) -> bytes:
    """Serialise weights (as from `GPT.state_for_saving`) and their description to the file format."""
    from safetensors.torch import save  # noqa: PLC0415

    tensors = {k: v.to("cpu", torch.float32) if v.is_floating_point() else v.cpu() for k, v in state.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"refusing to save a model with NaN/inf weights (first: {bad[0]})")
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(cfg.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "meta": json.dumps(meta or {}),
    }
    return save(tensors, metadata=metadata)


def save_model(path: str | os.PathLike, model: GPT, tokenizer: Tokenizer, meta: dict | None = None) -> None:
    atomic_write_bytes(path, model_file_bytes(model.state_for_saving(), model.cfg, tokenizer, meta))


class BackgroundSaver:
    """Writes model files on a worker thread so training does not wait for the disk. `submit`
    takes a CPU snapshot at once (so later training steps cannot change what is saved); when
    several snapshots for one path queue up, only the newest is written. `wait` blocks until
    everything submitted is on disk and re-raises the first error."""

    def __init__(self):
        self._pending: dict[Path, tuple] = {}  # path -> (state, cfg, tokenizer, meta)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: str | os.PathLike, model: GPT, tokenizer: Tokenizer, meta: dict) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_for_saving().items()}
        with self._lock:
            self._pending[Path(path)] = (state, model.cfg, tokenizer, meta)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="tinylm-saver", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                path, job = next(iter(self._pending.items()))
                del self._pending[path]
            try:
                atomic_write_bytes(path, model_file_bytes(*job))
            except OSError as e:  # a full disk, a folder made read-only: the user's to fix
                self._error = self._error or UsageError(
                    f"could not write the model file {path} ({e.strerror or e}); the previous file there is intact; "
                    "free some disk space (or fix the folder's permissions), then resume with --resume")
            except BaseException as e:  # noqa: BLE001 - handed to the training thread in wait()
                self._error = self._error or e

    def wait(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join()
            with self._lock:  # a submit may have raced with the worker's exit
                if self._pending and not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._work, name="tinylm-saver", daemon=True)
                    self._thread.start()
        if self._error is not None:
            err, self._error = self._error, None
            raise err


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    meta: dict


def _not_a_model(p: Path, why: str) -> UsageError:
    return UsageError(f"{p} is not a usable tinylm model file ({why}); check the -m path, or retrain the model")


def read_model_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a model file, with every failure turned into a UsageError."""
    from safetensors.torch import load  # noqa: PLC0415

    p = Path(path)
    if not p.exists():
        raise UsageError(f"model file {p} does not exist; check the -m path")
    if p.is_dir():
        raise UsageError(f"model path {p} is a directory; pass the .model file itself to -m")
    if not p.is_file():  # a FIFO, /dev/zero, /dev/fd/N: it could block or never end
        raise UsageError(f"model file {p} is not a regular file (a pipe or device); save the model to a file and pass that to -m")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"model file {p} cannot be read ({e.strerror}); check its permissions") from None
    if len(data) < 8:
        raise _not_a_model(p, "too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _not_a_model(p, "truncated or not safetensors")
    try:
        header = json.loads(data[8:8 + n])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, AttributeError):
        raise _not_a_model(p, "unreadable header") from None
    if metadata.get("format") != FORMAT:
        raise _not_a_model(p, f"format {metadata.get('format')!r}, expected {FORMAT!r}")
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types for damaged data
        raise _not_a_model(p, f"damaged tensor data: {e}") from None
    return metadata, tensors


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    metadata, tensors = read_model_file(path)
    try:
        cfg = GPTConfig.from_dict(json.loads(metadata["model_config"]))
        tokenizer = from_dict(json.loads(metadata["tokenizer"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise _not_a_model(Path(path), f"bad metadata: {e}") from None
    model = GPT(cfg)
    model.load_saved_state(tensors)
    return LoadedModel(model.to(device), tokenizer, meta)
