"""Is a checkpoint resumable? Every nested field a resume reads (loop, schedule, result, RNG
states, model config, tokenizer, weights, optimizer and EMA layout) checked for type and shape
before anything is restored, so a damaged or crafted checkpoint is refused with one line and the
caller can fall back to an earlier one. Split from state.py, which reads and writes checkpoints.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..model.files import loads_bounded
from ..model.gpt import GPT, GPTConfig
from ..tokenizers import from_dict as tokenizer_from_dict
from ..util.errors import UsageError


def _bad_checkpoint(p: Path, why: str) -> UsageError:
    return UsageError(f"checkpoint {p} {why}")

def _is_int(v) -> bool:
    return type(v) is int


def _is_num(v) -> bool:
    return type(v) in (int, float)


def _is_opt_num(v) -> bool:
    return v is None or _is_num(v)


def _is_scalar(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 0


# section -> field -> check: what restore_trainer reads from a state, and the type it needs
_SECTIONS = {
    "loop": {"epoch": _is_int, "pos": _is_int, "epoch_loss": _is_scalar, "epoch_ok": _is_scalar, "lr": _is_num,
             "skipped": _is_int, "elapsed": _is_num, "saved_out": lambda v: type(v) is bool, "best_ckpt_val": _is_num},
    "schedule": {"plateau": lambda v: isinstance(v, dict) and set(v) == {"lr", "best", "bad_epochs"}
                 and all(_is_num(x) for x in v.values()),
                 "warmup_progress": _is_num, "lr_scale": _is_num, "rollbacks": _is_int},
    "result": {"steps": _is_int, "epochs_done": _is_num, "tokens": _is_int, "best_val": _is_num, "last_val": _is_opt_num,
               "history": lambda v: isinstance(v, list) and all(isinstance(h, (list, tuple)) and len(h) == 3 for h in v)},
}


def check_resumable(path: str | os.PathLike, state: dict) -> None:
    """Check every nested field that a resume reads from checkpoint `state` (from load_checkpoint):
    the loop, schedule and result fields, the RNG states, the model config, the tokenizer, every
    model tensor's name and shape against the config, and the optimizer's layout. A damaged or
    crafted checkpoint is a UsageError here (so latest_usable falls back to the previous one),
    never a KeyError or a size mismatch inside restore_trainer."""
    p = Path(path)

    def bad(why: str) -> UsageError:
        why = why.replace("\r", "\\r").replace("\n", "\\n")  # text from the file must not break the one line
        return _bad_checkpoint(p, f"is damaged ({why}); resume from an earlier one")

    if not _is_int(state.get("step")) or state["step"] < 0:
        raise bad("step is not a count of steps")
    for section, fields in _SECTIONS.items():
        got = state[section]
        if not isinstance(got, dict):
            raise bad(f"{section} is not a dict")
        for k, ok in fields.items():
            if k not in got or not ok(got[k]):
                raise bad(f"{section}.{k} is {'missing' if k not in got else 'of the wrong type'}")
    _check_rng(state["rng"], bad)
    try:
        cfg = GPTConfig.from_dict(state["model_config"])
        tokenizer = tokenizer_from_dict(loads_bounded(state["tokenizer"])) if isinstance(state["tokenizer"], str) else None
    except (UsageError, ValueError) as e:
        raise bad(str(e)[:150]) from None
    except Exception as e:  # noqa: BLE001 - a tokenizer's constructor meeting malformed fields
        raise bad(f"tokenizer: {type(e).__name__}") from None
    if tokenizer is None or tokenizer.vocab_size != cfg.vocab_size:
        raise bad("its tokenizer does not match its model_config")
    with torch.device("meta"):  # shapes only, nothing allocated
        model = GPT(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = state["model"]
    if not isinstance(got, dict) or set(got) != set(want):
        raise bad("its model weights are not those of its model_config")
    for k, shape in want.items():
        t = got[k]
        if not (isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == shape):
            raise bad(f"model.{k} is not a float tensor of shape {list(shape)}")
        if not torch.isfinite(t).all():
            raise bad(f"model.{k} holds NaN or infinite values")
    shapes = [tuple(q.shape) for q in model.parameters()]
    _check_optimizer(state["optimizer"], shapes, bad)
    ema = state.get("ema")
    if ema is not None and not (isinstance(ema, dict) and isinstance(ema.get("updates"), torch.Tensor)
                                and isinstance(ema.get("shadow"), list) and len(ema["shadow"]) == len(shapes)
                                and all(isinstance(v, torch.Tensor) and tuple(v.shape) == s for v, s in zip(ema["shadow"], shapes))):
        raise bad("its EMA weights do not match the model")


def _check_rng(rng, bad) -> None:
    """Each RNG state, tried on a throwaway generator (the global ones are left alone)."""
    try:
        random.Random().setstate(rng["python"])
        n = rng["numpy"]
        np.random.Generator(np.random.MT19937()).bit_generator.state = {
            "bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}}
        if not (_is_int(n["has_gauss"]) and _is_num(n["gauss"]) and isinstance(rng["cuda"], list)):
            raise TypeError("numpy or cuda")
        torch.Generator().set_state(rng["torch"])
    except Exception as e:  # noqa: BLE001 - whatever shape a damaged state has
        raise bad(f"its RNG state is unusable: {type(e).__name__}") from None


def _check_optimizer(opt, shapes: list[tuple[int, ...]], bad) -> None:
    """The optimizers' state dicts (a list, one per optimizer, or one dict): together they hold
    every model parameter once, and each state tensor has the shape of a parameter."""
    sds = opt if isinstance(opt, list) else [opt]
    known, n_params = set(shapes), 0
    for sd in sds:
        if not (isinstance(sd, dict) and isinstance(sd.get("state"), dict) and isinstance(sd.get("param_groups"), list)):
            raise bad("its optimizer state is not a state dict")
        ids = []
        for g in sd["param_groups"]:
            if not (isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(i) for i in g["params"])):
                raise bad("its optimizer's parameter groups are malformed")
            ids += g["params"]
        n_params += len(ids)
        for i, st in sd["state"].items():
            if i not in ids or not isinstance(st, dict):
                raise bad(f"its optimizer holds state for an unknown parameter {i!r}")
            for v in st.values():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) not in known:
                    raise bad(f"its optimizer holds a tensor of shape {list(v.shape)}, which no parameter has")
    if n_params != len(shapes):
        raise bad(f"its optimizer covers {n_params} parameters, the model has {len(shapes)}")


