"""The model file: weights, model config, tokenizer and training metadata in one safetensors file.

Format: a safetensors file whose string metadata holds
    "format": "tinylm-model-1", "model_config": JSON, "tokenizer": JSON, "meta": JSON.
safetensors stores raw tensors and a JSON header, so loading never runs code (unlike pickle).
Files are written atomically (temp file in the same folder, fsync, rename) so an interrupted
save leaves the previous file intact. Loading reads only the safetensors header and raw tensor
bytes, so a file crafted to run code (a pickle) is refused as "not a usable tinylm model file".
`load_model` checks everything the metadata says (the config's types and ranges, the tokenizer,
every tensor's name, shape and dtype, finite weights) before it builds anything from it.
This module does not know how training works; the resumable training state (optimizer, RNGs,
position in the data) is not part of the model file but of a checkpoint (train/state.py).
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass
from itertools import accumulate
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
    why = why.replace("\r", "\\r").replace("\n", "\\n")  # text from the file must not break the one line
    return UsageError(f"{p} is not a usable tinylm model file ({why}); check the -m path, or retrain the model")


# Deepest nesting of arrays/objects a stored JSON value may have. tinylm writes at most 3 (a BPE
# tokenizer's merges); the bound keeps a crafted file from reaching json's recursion limit.
MAX_JSON_DEPTH = 32
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal, escapes included
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON `text`, found without parsing it (so without
    recursion): '[1, {"a": [2]}]' -> 3. Brackets inside strings do not count."""
    brackets = _NOT_A_BRACKET.sub("", JSON_STRING.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH):
    """json.loads that refuses nesting deeper than `max_depth` before parsing: raises ValueError
    (a json.JSONDecodeError for bad syntax), never RecursionError."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the scan, but the scan is the cheap half of the guarantee
        raise ValueError("JSON nested too deeply") from None


def read_model_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a model file, with every failure turned into a UsageError. Checks
    only the container (safetensors, our format); `load_model` checks what the metadata says."""
    p, data, header, metadata = _read_header(path)
    return metadata, _load_tensors(p, data)


def _read_header(path) -> tuple[Path, bytes, dict, dict[str, str]]:
    """(path, file bytes, safetensors header, its string metadata), the format checked."""
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
        header = loads_bounded(data[8:8 + n], max_depth=3)  # {name: {"shape": [...]}}: depth 3
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, AttributeError):
        raise _not_a_model(p, "unreadable header") from None
    if metadata.get("format") != FORMAT:
        raise _not_a_model(p, f"format {repr(metadata.get('format'))[:40]}, expected {FORMAT!r}")
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise _not_a_model(p, f"metadata {bad[0]!r} is not a string")
    return p, data, header, metadata


def _load_tensors(p: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load  # noqa: PLC0415

    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types for damaged data
        raise _not_a_model(p, f"damaged tensor data: {str(e).splitlines()[0][:150]}") from None


def _metadata_json(p: Path, metadata: dict[str, str], key: str, default: str | None = None) -> dict:
    """metadata[key] parsed as a JSON object."""
    if key not in metadata and default is None:
        raise _not_a_model(p, f"no {key!r} in its metadata")
    try:
        value = loads_bounded(metadata.get(key, default))
    except json.JSONDecodeError as e:
        raise _not_a_model(p, f"{key} is not valid JSON: {e.msg} at character {e.pos}") from None
    except ValueError as e:  # nested too deeply
        raise _not_a_model(p, f"{key}: {str(e)[:120]}") from None
    if not isinstance(value, dict):
        raise _not_a_model(p, f"{key} must be a JSON object, got a JSON {type(value).__name__}")
    return value


def expected_tensors(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor a model file of `cfg` holds. The GPT is built on the meta
    device (shapes, no memory), so this can never disagree with the modules themselves."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_for_saving().items()}


def _check_tensor_header(p: Path, header: dict, cfg: GPTConfig) -> None:
    """Every stored tensor's name, dtype and shape against those `cfg` implies, before any tensor
    is read or the model allocated (a config that lies about its size is caught here)."""
    want = expected_tensors(cfg)
    have = {k: v for k, v in header.items() if k != "__metadata__"}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise _not_a_model(p, f"its tensors do not match its model_config: {what}")
    for name, shape in want.items():
        info = have[name]
        got = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(got, list) or tuple(got) != shape:
            raise _not_a_model(p, f"tensor {name} has shape {got}, but model_config implies {list(shape)}")
        if info.get("dtype") != "F32":  # model_file_bytes stores every weight in fp32
            raise _not_a_model(p, f"tensor {name} is stored as {str(info.get('dtype'))[:10]}, expected F32")


def _check_finite(p: Path, tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise _not_a_model(p, f"tensor {name} holds NaN or infinite values")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Read, check and build a model file. Everything the file says is checked before anything
    is built from it (the types and ranges of the config, the tokenizer, every tensor's name,
    shape and dtype, finite weights), and every problem is one UsageError naming the file."""
    p, data, header, metadata = _read_header(path)
    config, tok, meta = (_metadata_json(p, metadata, k, d) for k, d in
                         (("model_config", None), ("tokenizer", None), ("meta", "{}")))
    try:
        cfg = GPTConfig.from_dict(config)
        tokenizer = from_dict(tok)
    except UsageError as e:
        raise _not_a_model(p, str(e)) from None
    except Exception as e:  # noqa: BLE001 - a tokenizer's constructor meeting malformed fields
        raise _not_a_model(p, f"tokenizer is damaged ({type(e).__name__}: {str(e)[:100]})") from None
    if tokenizer.vocab_size != cfg.vocab_size:
        raise _not_a_model(p, f"its tokenizer has {tokenizer.vocab_size} tokens but model_config.vocab_size is {cfg.vocab_size}")
    _check_tensor_header(p, header, cfg)
    tensors = _load_tensors(p, data)
    _check_finite(p, tensors)
    model = GPT(cfg)
    model.load_saved_state(tensors)
    return LoadedModel(model.to(device), tokenizer, meta)
