"""The resumable training state: checkpoints that let a run continue exactly where it stopped.

Layout: beside the output model `models/book.model`, the folder `models/book.model.ckpt/` holds
    step-00001200.ckpt   one file per checkpoint, the newest `--keep-checkpoints` kept
    best.ckpt            a hard link to (or copy of) the checkpoint with the lowest validation
                         loss measured at its own step (only checkpoints taken at a validation
                         step have one)
A file is `torch.save` of a dict holding only tensors and plain values (str, int, float, bool,
None, lists, tuples, dicts), so it is read with `torch.load(weights_only=True)`, which refuses
anything else and never runs code from the file. Writes are atomic (util/files.py).

What a checkpoint holds (`trainer_state`): model and optimizer state, the step / epoch / position
in the epoch (the sampler is deterministic per (seed, epoch), so the position is enough), the
schedule's state (plateau, warmup progress, the rollback scale), the epoch's running loss, the
validation history, the RNG states (Python, NumPy, torch CPU and CUDA; with several processes,
every process's), the number of processes, the model and training configs, and SHA-256
fingerprints of the data and the tokenizer. With several processes (train/distributed.py) process 0
writes the file and every process reads it back when it resumes or rolls back.

This module writes, finds, checks and reads checkpoints and moves state into and out of a
Trainer (by its attribute names); it does not decide when to checkpoint (train/trainer.py) or which
checkpoint a command resumes (runner.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..model.files import atomic_write_bytes
from .ema import EMA
from ..model.config import FLAGS as MODEL_FLAGS
from ..util.errors import UsageError
from .config import FLAGS as TRAIN_FLAGS
from ..util.log import log
from .state_checks import _bad_checkpoint, check_resumable  # noqa: F401 - re-exported

FORMAT = "tinylm-train-state-1"
BEST = "best.ckpt"
_STEP_FILE = re.compile(r"step-(\d+)\.ckpt")

# TrainConfig fields that change how a run is carried out, not what it computes: a resume may
# change them freely. Every other field must match the checkpoint's (or --ignore-mismatch).
OPERATIONAL = frozenset({"device", "compile", "cuda_graph", "log_interval", "checkpoint_every", "checkpoint_minutes",
                         "keep_checkpoints", "nan_patience", "max_rollbacks"})
# config field -> the flag that sets it, where the two names differ
# checkpoint field -> the flag users type (a field of neither table is shown as --field-name)
FLAG_NAMES = {field: flag for table in (MODEL_FLAGS, TRAIN_FLAGS) for field, (_, flag) in table.items()}


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where the checkpoints of the run writing `out` go: models/book.model -> models/book.model.ckpt."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def step_file(step: int) -> str:
    return f"step-{step:08d}.ckpt"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in `folder`, oldest first; temp files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _STEP_FILE.fullmatch(name))]
    return sorted(found)


# ---------------------------------------------------------------- fingerprints and RNG

def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()


def rng_state() -> dict:
    """Every RNG a training step may draw from, as plain values and tensors."""
    np_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, "has_gauss", "gauss"}
    return {"python": random.getstate(),
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                      "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
            "torch": torch.get_rng_state(),
            # only if a GPU is in use: asking would start CUDA (seconds, and memory) for a CPU run
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------- Trainer <-> state

def _cpu(x):
    """A copy of `x` with every tensor on the CPU (so later steps cannot change what is saved)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    return x


def trainer_state(t, val_loss: float | None = None, rng_ranks: list | None = None) -> dict:
    """Everything an exact resume of Trainer `t` needs, as of the end of its latest step.
    rng_ranks: with several processes, every process's `rng_state()` in rank order."""
    res = t.result
    return {
        "format": FORMAT,
        "step": res.steps,
        "val_loss": val_loss,  # validation loss measured at this step, or None
        "model": _cpu(t.model.state_dict()),
        "optimizer": _cpu(t.opt.state_dict()),
        "ema": t.ema.state_dict() if t.ema is not None else None,
        **_cpu(t.loop_state()),  # "loop" and "schedule": the Trainer's own counters
        "result": {"steps": res.steps, "epochs_done": res.epochs_done, "tokens": res.tokens, "best_val": res.best_val,
                   "last_val": res.last_val, "history": [tuple(h) for h in res.history]},
        "rng": rng_state(),
        "rng_ranks": rng_ranks,
        "world": t.world,
        "train_config": asdict(t.cfg),
        "model_config": t.model.cfg.to_dict(),
        "tokenizer": json.dumps(t.tokenizer.to_dict()),
        "tokenizer_sha256": tokenizer_sha256(t.tokenizer),
        "data_sha256": t.meta.get("dataset_sha256"),
        "meta": {k: v for k, v in t.meta.items() if isinstance(v, (str, int, float, bool)) or v is None},
    }


def _load_optimizer(opt, sd, in_place: bool) -> None:
    """Load optimizer state. in_place: copy into the existing state tensors instead of replacing
    them, which a captured CUDA graph needs (it replays on the tensors it saw at capture)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if not (in_place and all(p in opt.state for p in params)):
        lrs = [g["lr"] for g in opt.param_groups]
        opt.load_state_dict(sd)
        for g, lr in zip(opt.param_groups, lrs):
            if isinstance(lr, torch.Tensor):  # subtle: keep the device lr tensor the graphed step fills
                g["lr"] = lr
        return
    for i, p in enumerate(params):
        for k, v in sd["state"][i].items():
            opt.state[p][k].copy_(v)


def restore_trainer(t, s: dict) -> None:
    """Put Trainer `t` back in the state `s` (from `trainer_state`); the RNGs last."""
    t.model.load_state_dict(s["model"])
    _load_optimizer(t.opt, s["optimizer"], in_place=t.graphed is not None)
    if t.ema is not None:  # a checkpoint from a run without --ema starts the average here
        t.ema.load_state_dict(s.get("ema") or EMA(t.model.parameters(), t.ema.decay).state_dict())
    res = t.result
    t.load_loop_state(s["loop"], s["schedule"])
    for k, v in s["result"].items():
        setattr(res, k, [tuple(h) for h in v] if k == "history" else v)
    t.reset_position()
    ranks = s.get("rng_ranks")
    if t.dist is not None and ranks and len(ranks) == t.world:
        set_rng_state(ranks[t.dist.rank])  # each process continues its own random streams (dropout)
    else:
        set_rng_state(s["rng"])
        if t.dist is not None:  # a checkpoint of another number of processes (--ignore-mismatch): one stream each
            torch.manual_seed(t.cfg.seed + t.dist.rank + 1_000_003 * t.result.steps)


# ---------------------------------------------------------------- a Trainer's checkpoint and rollback

def checkpoint(t) -> None:
    """Save Trainer `t`'s state as a checkpoint in t.ckpt_dir. Postponed (to the next step) while
    steps are being skipped or the weights are not finite, so a rollback always finds a healthy
    state. A failed write, such as a full disk, stops the run with a UsageError: the previous
    checkpoint is intact and resumes it (continuing would only risk more work that cannot be saved).
    With several processes every one calls this at the same step: process 0 writes the file with
    all processes' RNG states, and none goes on before it is on disk."""
    res = t.result
    if int(t.bad_run) or not t.weights_finite():
        if not t.ckpt_pending:
            log.warning("Checkpoint postponed: the latest steps had a non-finite loss or gradient")
        t.ckpt_pending = True
        return
    val = res.last_val if res.history and res.history[-1][0] == res.steps else None
    best = val is not None and val < t.best_ckpt_val
    if best:
        t.best_ckpt_val = val
    rng_ranks = t.dist.gather_objects(rng_state()) if t.dist is not None else None
    if t.main:
        t.saver.wait()  # the model files this state speaks of are on disk first
        before = list_checkpoints(t.ckpt_dir)
        try:
            path = save_checkpoint(t.ckpt_dir, trainer_state(t, val, rng_ranks), t.cfg.keep_checkpoints, best=best,
                                   replace=t.replace_ckpts)
        except OSError as e:
            kept = f"the previous checkpoint {before[-1][1]} is intact" if before else "there is no earlier checkpoint"
            raise UsageError(f"could not write a checkpoint in {t.ckpt_dir} ({e.strerror or e}); {kept}; "
                             "free some disk space, then resume with --resume") from None
        log.info("Saved checkpoint %s", path)
    if t.dist is not None:
        t.dist.barrier()
    t.replace_ckpts, t.ckpt_pending, t.last_ckpt = [], False, t.clock()


def rollback(t, bad: int) -> None:
    """After `bad` non-finite steps in a row: put Trainer `t` back to its newest checkpoint (or,
    with none yet, keep the current weights, which skipped steps left unchanged) and halve the
    learning rate; after t.cfg.max_rollbacks of these, stop with a UsageError."""
    cfg, step = t.cfg, t.result.steps
    if t.rollbacks >= cfg.max_rollbacks:
        raise UsageError(f"training diverged: {bad} steps in a row up to step {step} had a non-finite loss or gradient, "
                         f"after {t.rollbacks} rollback(s) with a lower learning rate; try a lower --lr (now {cfg.lr:g}), "
                         "a longer --warmup or --grad-clip 1")
    # what a rollback keeps: the count of rollbacks and skips, and the time spent (a --time budget is not given back)
    rollbacks, scale, skipped, elapsed_before = t.rollbacks + 1, t.lr_scale * 0.5, int(t.skipped), t.elapsed_before
    found, problems = latest_usable(t.ckpt_dir, exclude=set(t.replace_ckpts)) if t.ckpt_dir is not None else (None, [])
    for problem in problems:
        log.warning("Skipping %s", problem)
    if found is not None:
        restore_trainer(t, found[1])
        where = f"checkpoint {found[0]} (step {t.result.steps})"
    else:
        where = "the current weights (no checkpoint yet)"
    t.rollbacks, t.lr_scale, t.elapsed_before, t.skips_logged = rollbacks, scale, elapsed_before, skipped
    t.skipped.fill_(skipped)
    t.bad_run.zero_()
    log.warning("%d steps in a row had a non-finite loss or gradient: rolled back to %s with the learning rate "
                "scaled by %g (rollback %d of at most %d)", bad, where, scale, rollbacks, cfg.max_rollbacks)


# ---------------------------------------------------------------- files

def save_checkpoint(folder: Path, state: dict, keep: int, best: bool = False, replace: list[Path] = ()) -> Path:
    """Write `state` as folder/step-N.ckpt (atomically), link best.ckpt to it if `best`, then keep
    only the newest `keep` step files. `replace`: files of an earlier run in this folder, removed
    once this one is safely written. Raises OSError (e.g. a full disk) with earlier files intact."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = folder / step_file(state["step"])
    atomic_write_bytes(path, buf.getvalue())
    if best:
        _link_best(path, buf.getvalue())
    for old in replace:
        if old != path and not (best and old.name == BEST):
            old.unlink(missing_ok=True)
    for stray in [*folder.glob(".step-*.ckpt.tmp*"), *folder.glob(f".{BEST}.*")]:  # left by a run killed mid-save
        stray.unlink(missing_ok=True)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _link_best(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{BEST}.link{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)  # no second copy on disk; the data outlives the step file's pruning
        os.replace(tmp, path.with_name(BEST))
    except OSError:  # no hard links here (some network or FAT file systems): write a copy
        tmp.unlink(missing_ok=True)
        atomic_write_bytes(path.with_name(BEST), data)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without executing code from it; every failure is a UsageError."""
    p = Path(path)
    if not p.exists():
        raise _bad_checkpoint(p, "does not exist; check the path given to --resume")
    if p.is_dir():
        raise _bad_checkpoint(p, "is a folder; pass one of its step-*.ckpt files, or the folder's model with -o")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except PermissionError:
        raise _bad_checkpoint(p, "cannot be read (permission denied); fix its permissions") from None
    except Exception as e:  # noqa: BLE001 - every way a file can be damaged or hostile
        import pickle  # noqa: PLC0415

        # torch's restricted unpickler names the class or function a file asks for ("Unsupported
        # global: GLOBAL io.open ..."): that is a file built to run code, or another program's
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise _bad_checkpoint(p, "was refused: it holds Python objects, not just tensors and plain values, so loading "
                                     "it could run code; only resume from checkpoints tinylm wrote") from None
        why = "a truncated or corrupt archive" if "zip archive" in str(e) else "not a file torch.save wrote"
        raise _bad_checkpoint(p, f"is damaged or not a tinylm checkpoint ({why}); resume from an earlier one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _bad_checkpoint(p, f"is not a tinylm training checkpoint (format {state.get('format') if isinstance(state, dict) else None!r}, "
                                 f"expected {FORMAT!r})")
    missing = {"model", "optimizer", "loop", "schedule", "result", "rng", "train_config", "model_config", "tokenizer"} - set(state)
    if missing:
        raise _bad_checkpoint(p, f"is incomplete (no {', '.join(sorted(missing))}); resume from an earlier one")
    return state


def latest_usable(folder: Path, exclude: set[Path] = frozenset()) -> tuple[tuple[Path, dict] | None, list[str]]:
    """(path, state) of the newest checkpoint in `folder` that loads and passes `check_resumable`
    (None if none does), and why each newer one was skipped."""
    problems = []
    for _, path in reversed(list_checkpoints(folder)):
        if path in exclude:
            continue
        try:
            state = load_checkpoint(path)
            check_resumable(path, state)
            return (path, state), problems
        except UsageError as e:
            problems.append(str(e))
    return None, problems


# ---------------------------------------------------------------- does a checkpoint fit this run?

def _flag(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b))


def mismatches(state: dict, train_config: dict, model_config: dict, data_sha256: str | None,
               tokenizer_sha: str | None = None, world: int = 1) -> list[str]:
    """What differs between checkpoint `state` and the run about to resume it, one short phrase
    each, e.g. ["--lr 0.001 -> 0.01", "the data (sha256 3f2a9c1e -> 9b07d4aa)"]. `world`: the
    processes of this run (the batches a step takes, and their order, depend on it)."""
    out = []
    if state.get("world", 1) != world:
        out.append(f"the number of processes (torchrun --nproc_per_node) {state.get('world', 1)} -> {world}")
    if data_sha256 and state.get("data_sha256") and data_sha256 != state["data_sha256"]:
        out.append(f"the data (sha256 {state['data_sha256'][:8]} -> {data_sha256[:8]})")
    if tokenizer_sha and tokenizer_sha != state.get("tokenizer_sha256"):
        out.append("the tokenizer")
    for saved, now in ((state["model_config"], model_config), (state["train_config"], train_config)):
        for k in sorted(set(saved) | set(now)):
            if k not in OPERATIONAL and not _same(saved.get(k), now.get(k)):
                out.append(f"{_flag(k)} {saved.get(k)} -> {now.get(k)}")
    return out
