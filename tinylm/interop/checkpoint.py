"""A training checkpoint (<output>.ckpt/step-N.ckpt or best.ckpt) used as a model.

`load_any` is what generate, chat, eval and export call with -m: a model file loads as before
(model/files.py); a checkpoint (a torch.save zip archive, found by its magic bytes) is read with
train/state.py's `load_checkpoint` (weights_only, never code) and built into the same
`LoadedModel`. With --ema the run saved and evaluated the averaged weights, so those are the ones
a checkpoint gives too. Knows nothing about resuming: the optimizer, RNG and loop state are ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..model.config import GPTConfig
from ..model.files import LoadedModel, load_model
from ..model.gpt import GPT
from ..tokenizers import from_dict
from ..util.errors import UsageError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format; a safetensors model file starts with its header size


def is_checkpoint(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZIP_MAGIC
    except OSError:
        return False


def load_any(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A model file or a training checkpoint, as a LoadedModel; every problem a UsageError."""
    p = Path(path)
    if p.is_dir() and p.name.endswith(".ckpt"):
        raise UsageError(f"{p} is a checkpoint folder; pass one of its files to -m, e.g. {p / 'best.ckpt'} or a step-*.ckpt")
    if p.is_file() and is_checkpoint(p):
        return load_checkpoint_model(p, device)
    return load_model(p, device)


def load_checkpoint_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    from ..train.state import load_checkpoint  # noqa: PLC0415

    try:
        state = load_checkpoint(path)
    except UsageError as e:  # worded for --resume; say it of -m, as model files' errors are
        why = str(e).removeprefix(f"checkpoint {path} ")
        raise UsageError(f"{path} is not a usable tinylm model file or checkpoint: the file {why}") from None
    why = f"checkpoint {path} cannot be used as a model"
    try:
        cfg = GPTConfig.from_dict(state["model_config"])
        tok = from_dict(json.loads(state["tokenizer"]) if isinstance(state["tokenizer"], str) else state["tokenizer"])
    except UsageError as e:
        raise UsageError(f"{why} ({e})") from None
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer field
        raise UsageError(f"{why} (its tokenizer is damaged: {type(e).__name__})") from None
    if tok.vocab_size != cfg.vocab_size:
        raise UsageError(f"{why} (its tokenizer has {tok.vocab_size} tokens, its model_config {cfg.vocab_size})")
    sd = state["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{why} (its model state is not a dict of tensors)")
    model = GPT(cfg)
    try:
        model.load_saved_state(sd)
    except UsageError as e:
        raise UsageError(f"{why}: {e}") from None
    _apply_ema(model, state.get("ema"))
    meta = {k: v for k, v in (state.get("meta") or {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
    meta.update(steps=state.get("step"), checkpoint=str(path))
    return LoadedModel(model.to(device), tok, meta)


def _apply_ema(model: GPT, ema) -> None:
    """Put the checkpoint's weight average (--ema) into the model, as the run's saved model had it."""
    shadow = ema.get("shadow") if isinstance(ema, dict) else None
    params = list(model.parameters())
    if not shadow or len(shadow) != len(params) or any(
            not isinstance(s, torch.Tensor) or s.shape != p.shape for s, p in zip(shadow, params)):
        return
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s)
