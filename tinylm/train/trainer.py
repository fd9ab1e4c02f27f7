"""Training: `TrainConfig` and the `Trainer` loop, built from small named steps.

Owns the optimizer (AdamW, decay on matrices only), the schedule in use, the loop around
train/step.py's `train_step` (or the CUDA-graph step) and `evaluate` on the validation split, saving
the best and last model, checkpoints (when, not how: see train/state.py), and
stopping (epochs, steps or time, whichever comes first, or a SIGINT/SIGTERM, which saves a
checkpoint and returns). Numerical faults: a step whose loss or gradient is not finite is skipped
on the device (no host sync); several in a row roll back to the last checkpoint with a lower
learning rate. Data parallelism (several processes under torchrun, see train/distributed.py): each
process trains on its share of the batches, the gradients are averaged in every step, process 0
alone logs and writes files, and every decision that depends on a clock or a signal is agreed on
by all processes. It does not parse flags or read files.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import state as trainstate
from ..model.files import BackgroundSaver
from ..data.corpus import cache_dir
from ..data.batches import ChunkBatches, TokenSplit
from ..util.device import autocast_dtype, configure, resolve_device
from .distributed import Dist
from .ema import EMA
from ..util.errors import UsageError
from ..util.log import Progress, log
from ..model.gpt import GPT
from .optim import make_optimizer, param_groups
from .schedule import PlateauState, plateau_update, scheduled_lr
from ..kernels.select import training_kernels
from .step import evaluate, plain_head_loss, train_step, training_forward
from ..tokenizers import Tokenizer
from .config import COMPILE_MODES, OPTIMIZERS, SCHEDULES, TrainConfig, check_device  # noqa: F401 - re-exported

@dataclass
class TrainResult:
    steps: int = 0
    epochs_done: float = 0.0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float = math.inf
    last_val: float = math.nan
    interrupted: bool = False
    history: list = field(default_factory=list)  # (step, elapsed s, val loss) per evaluation


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopFlag:
    """First SIGINT/SIGTERM asks training to stop after the current step (and save); a second
    SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.set = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        log.info("Stopping after this step and saving (press Ctrl-C again to quit at once)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _progress(cfg: TrainConfig, step: int, epoch_pos: float, elapsed: float) -> float:
    """Fraction of the run done, by whichever limit is closest to being reached."""
    parts = []
    if cfg.max_steps:
        parts.append(step / cfg.max_steps)
    if cfg.epochs:
        parts.append(epoch_pos / cfg.epochs)
    if cfg.time_budget:
        parts.append(elapsed / cfg.time_budget)
    return min(max(parts), 1.0)


class Trainer:
    """Holds the state of one run; `run()` executes it. Saving goes to `out` (best by validation
    loss; the current weights when there is no validation), `last` (latest weights) and, when
    `checkpoints` names a folder, resumable checkpoints there (see train/state.py). `dist`: this
    process's place among several training together (train/distributed.py); only process 0 writes."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, split: TokenSplit, cfg: TrainConfig,
                 out: Path | None = None, last: Path | None = None, meta: dict | None = None,
                 checkpoints: Path | None = None, dist: Dist | None = None):
        self.cfg, self.tokenizer, self.split = cfg, tokenizer, split
        self.out, self.last, self.meta = out, last, dict(meta or {})
        self.dist = dist
        self.main = dist is None or dist.main  # the process that logs and writes files
        self.world = 1 if dist is None else dist.world
        self.device = resolve_device(cfg.device) if dist is None else dist.device
        configure(self.device)
        self.dtype = autocast_dtype(self.device, cfg.dtype)
        self.model = model.to(self.device)
        if dist is not None:  # every process starts from process 0's weights
            dist.broadcast_(list(self.model.parameters()))
        T = model.cfg.context_size
        # The training forward, (x, y) -> loss, with the kernels chosen for it; evaluation always
        # runs the eager, plain self.model, so switching between train and eval never recompiles.
        kernels = training_kernels(self.model, self.device, compile_blocks=cfg.compile == "blocks")
        self.fwd = training_forward(self.model, kernels.block, kernels.head_loss or plain_head_loss)
        if cfg.compile != "off":
            # keep compiled kernels between runs, so only the first run pays the full compile time
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            if cfg.compile == "model":
                self.fwd = torch.compile(self.fwd, dynamic=False)
        self.ema = EMA(self.model.parameters(), cfg.ema) if cfg.ema else None
        self.graphed = None
        check_device(cfg, self.device)
        if cfg.cuda_graph:  # the whole step (compiled forward or eager) recorded once, replayed
            from .graph_step import GraphedStep  # noqa: PLC0415

            self.graphed = GraphedStep(self.model, param_groups(self.model, cfg), cfg, self.dtype, (cfg.batch_size, T),
                                       forward=self.fwd, after_step=self.ema.update if self.ema else None, dist=dist)
            self.opt = self.graphed.opt
        else:
            self.opt = make_optimizer(self.model, cfg, self.device)
        # the token stream lives on the device, so batches are gathered there with no copies
        self.batches = ChunkBatches(split.train.to(self.device), T, cfg.batch_size, cfg.seed,
                                    rank=0 if dist is None else dist.rank, world=self.world)
        self.steps_per_epoch = max(1, self.batches.batches_per_epoch // cfg.grad_accum)
        self.plateau = PlateauState(lr=cfg.lr)
        self.warmup_progress = 0.0
        self.result = TrainResult()
        self.saved_out = False  # whether `out` holds this run's model (kept across a resume)
        self.saved_paths: set[Path] = set()  # the files this process's run has saved (or, not process 0, would have)
        self.saver = BackgroundSaver()
        # report/metrics.py's MetricsWriter (the runner sets it on process 0), fed a row per log
        # interval from values read there anyway, and one per validation; None = no metrics file
        self.metrics = None
        self.stats: dict = {}  # the last step's device-side numbers (the gradient norm; see optim.clipped_step)
        # Where the run is, all of it saved in a checkpoint (trainstate.trainer_state): the epoch,
        # the optimizer steps done in it, and its running loss (for the plateau schedule). The
        # counters stay on the device so a step never waits for the host.
        self.epoch, self.pos, self.lr = 0, 0, cfg.lr
        self.epoch_loss = torch.zeros((), device=self.device)  # sum of this epoch's finite step losses
        self.epoch_ok = torch.zeros((), device=self.device)  # how many steps that sum holds
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)  # steps skipped as non-finite
        self.bad_run = torch.zeros((), dtype=torch.long, device=self.device)  # ... of them in a row, up to now
        self.skips_logged, self.lr_scale, self.rollbacks = 0, 1.0, 0
        self.elapsed_before = 0.0  # training seconds before a resume
        self.ckpt_dir = Path(checkpoints) if checkpoints is not None else None
        self.replace_ckpts: list[Path] = []  # an earlier run's checkpoints, removed once this run has one
        self.best_ckpt_val, self.ckpt_pending = math.inf, False
        self.t0 = time.time()
        self.agreed = (False, 0.0)  # data parallel: (a signal, the training seconds) as last agreed (_agree)
        self.last_ckpt = 0.0  # self.clock() at the latest checkpoint
        self._batches = None  # this epoch's batch iterator; None = start it at (epoch, pos)

    def lr_for(self, step: int, progress: float) -> float:
        cfg = self.cfg
        if step == cfg.warmup_steps:
            self.warmup_progress = progress  # the cosine starts its decay from here
        return scheduled_lr(cfg.schedule, step, progress, cfg.lr, cfg.min_lr, cfg.warmup_steps, self.warmup_progress,
                            self.plateau)

    def loop_state(self) -> dict:
        """Where the loop is, for a checkpoint (train/state.py stores it; load_loop_state reads it
        back): {"loop": counters of the epoch and the run, "schedule": the learning rate's state}."""
        return {"loop": {"epoch": self.epoch, "pos": self.pos, "epoch_loss": self.epoch_loss, "epoch_ok": self.epoch_ok,
                         "lr": self.lr, "skipped": int(self.skipped), "elapsed": self.elapsed(),
                         "saved_out": self.saved_out, "best_ckpt_val": self.best_ckpt_val},
                "schedule": {"plateau": asdict(self.plateau), "warmup_progress": self.warmup_progress,
                             "lr_scale": self.lr_scale, "rollbacks": self.rollbacks}}

    def load_loop_state(self, loop: dict, sched: dict) -> None:
        """The inverse of loop_state (device counters copied in place: a recorded graph reads them)."""
        self.epoch, self.pos, self.lr, self.saved_out = loop["epoch"], loop["pos"], loop["lr"], loop["saved_out"]
        self.epoch_loss.copy_(loop["epoch_loss"])
        self.epoch_ok.copy_(loop["epoch_ok"])
        self.skipped.fill_(loop["skipped"])
        self.skips_logged = loop["skipped"]
        self.elapsed_before, self.best_ckpt_val = loop["elapsed"], loop["best_ckpt_val"]
        self.plateau, self.warmup_progress = PlateauState(**sched["plateau"]), sched["warmup_progress"]
        self.lr_scale, self.rollbacks = sched["lr_scale"], sched["rollbacks"]

    def elapsed(self) -> float:
        """Training seconds so far, those before a resume included."""
        return self.elapsed_before + time.time() - self.t0

    def clock(self) -> float:
        """The training seconds that time-based decisions use (the --time budget, the cosine
        schedule's progress under it, --checkpoint-minutes): the live clock in a single process;
        with several processes the largest of their clocks at the last agreement, so that all of
        them decide alike."""
        return self.elapsed() if self.dist is None else self.agreed[1]

    def _stopped(self, stop: StopFlag) -> bool:
        """Whether a signal asked the run to stop: at once in a single process; with several, as
        agreed at the last agreement."""
        return stop.set if self.dist is None else self.agreed[0]

    def _agree(self, stop: StopFlag) -> None:
        """Data parallelism: every log_interval steps (the same steps in every process), agree on
        whether any process was signalled and on the training time (a host sync). Between these
        points every decision is made from values all processes share."""
        if self.dist is None or self.result.steps % self.cfg.log_interval:
            return
        signalled, seconds = self.dist.max_([float(stop.set), self.elapsed()])
        self.agreed = (bool(signalled), seconds)

    def reset_position(self) -> None:
        """Restart the batch iterator at (self.epoch, self.pos), after a resume or a rollback."""
        self._batches = None

    def run(self) -> TrainResult:
        cfg, res = self.cfg, self.result
        self.model.train()
        self.t0 = time.time()
        self.agreed = (False, self.elapsed_before)
        self.last_ckpt = self.clock()
        progress = Progress(cfg.log_interval)
        if self.metrics is not None:
            self.metrics.start(self.elapsed(), res.tokens)
        with StopFlag() as stop:
            while not (self._stopped(stop) or self._done()):
                self._step(progress)
                if res.steps % cfg.log_interval == 0 and self._check_faults():
                    progress.mark = (time.time(), res.tokens)  # rolled back: the token count went back too
                    continue  # ... and training goes on from the checkpoint's position
                self._agree(stop)
                ending = self._stopped(stop) or self._done()
                if self.pos == self.steps_per_epoch or ending:
                    self._end_epoch(progress, self._stopped(stop))
                if not ending and self._checkpoint_due():
                    trainstate.checkpoint(self)
            res.interrupted = self._stopped(stop)
        progress.clear()
        res.elapsed = self.elapsed()
        if not res.interrupted and (not res.history or res.history[-1][0] != res.steps):
            self._validate()
        self._save_last()
        if self.ckpt_dir is not None:  # also what a SIGINT/SIGTERM saves
            trainstate.checkpoint(self)
        return res

    def _done(self) -> bool:
        cfg = self.cfg
        return bool((cfg.epochs and self.epoch >= cfg.epochs) or (cfg.max_steps and self.result.steps >= cfg.max_steps)
                    or (cfg.time_budget and self.clock() >= cfg.time_budget))

    def _step(self, progress: Progress) -> None:
        cfg, res = self.cfg, self.result
        if self._batches is None:
            self._batches = self.batches.epoch(self.epoch, skip=self.pos * cfg.grad_accum)
            self.t_epoch = time.time()
        frac = _progress(cfg, res.steps, self.epoch + self.pos / self.steps_per_epoch, self.clock())
        self.lr = lr = self.lr_for(res.steps, frac) * self.lr_scale
        micro_batches = [next(self._batches) for _ in range(cfg.grad_accum)]
        if self.graphed is not None:
            loss = self.graphed(micro_batches, lr)
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr
            loss = train_step(self.model, self.opt, micro_batches, cfg, self.device, self.dtype, self.dist, forward=self.fwd,
                              stats=self.stats)
            if self.ema is not None:
                self.ema.update()
        ok = torch.isfinite(loss)  # False: the step was skipped (device-side bookkeeping, no sync)
        self.epoch_loss += torch.where(ok, loss, 0.0)
        self.epoch_ok += ok
        self.skipped += ~ok
        self.bad_run = (self.bad_run + 1) * ~ok
        self.pos += 1
        res.steps += 1
        res.tokens += cfg.batch_size * cfg.grad_accum * self.model.cfg.context_size * self.world
        res.epochs_done = self.epoch + self.pos / self.steps_per_epoch
        log_row = self.metrics is not None and res.steps % cfg.log_interval == 0
        if self.main and (progress.wants(res.steps) or log_row):
            loss_now = loss.item()  # the one host sync of a logged step; the rest below are then free
            progress.update(res.steps, loss_now, lr, res.tokens, frac, self.elapsed())
            if log_row:
                norm = (self.graphed.stats if self.graphed is not None else self.stats).get("grad_norm")
                self.metrics.train(res.steps, res.tokens, self.elapsed(), loss_now, lr, None if norm is None else norm.item())
        if cfg.eval_interval and res.steps % cfg.eval_interval == 0:
            progress.clear()
            self._validate()

    def _end_epoch(self, progress: Progress, stopped: bool) -> None:
        """Close the epoch (log, plateau schedule, per-epoch validation); also called when the
        run ends in the middle of one, which then stays open for a resume."""
        cfg = self.cfg
        full = self.pos == self.steps_per_epoch
        progress.clear()
        counted = float(self.epoch_ok)
        avg = float(self.epoch_loss) / max(counted, 1)
        log.info("Epoch %d done in %.2f seconds, learning rate: %.6g, average loss: %.4f", self.epoch + 1,
                 time.time() - self.t_epoch, self.lr, avg)
        if cfg.schedule == "plateau" and full and counted:
            self.plateau = plateau_update(self.plateau, avg, cfg.patience, 0.5, min_lr=cfg.min_lr)
        if not cfg.eval_interval and not stopped:
            self._validate()
        if full:
            self.epoch, self.pos = self.epoch + 1, 0
            self.epoch_loss.zero_()
            self.epoch_ok.zero_()
            self._batches = None

    def _validate(self) -> None:
        res = self.result
        if len(self.split.val) < 2:
            if self.out is not None:
                with self.averaged():
                    self._save(self.out)
            return
        with self.averaged():  # with --ema the averaged weights are the ones measured and saved
            val = evaluate(self.model, self.split.val, self.model.cfg.context_size, self.cfg.batch_size, self.device, self.dtype,
                           self.dist)
            res.last_val = val
            res.history.append((res.steps, self.elapsed(), val))
            if self.metrics is not None:
                self.metrics.eval(res.steps, res.tokens, self.elapsed(), val)
            improved = val < res.best_val
            log.info("Validation loss: %.4f, perplexity: %.2f (step %d, %.1f s)%s", val, math.exp(min(val, 50)), res.steps,
                     self.elapsed(), " (best so far)" if improved else "")
            if improved:
                res.best_val = val
                if self.out is not None:
                    self._save(self.out)

    def averaged(self):
        """Context: the model holds the weight average (--ema) inside, the raw weights after."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    # ------------------------------------------------------------ numerical faults

    def weights_finite(self) -> bool:
        return bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())

    def _check_faults(self) -> bool:
        """At a log interval (one host sync): report skipped steps; roll back when the last
        cfg.nan_patience steps or more were all skipped. Returns whether it rolled back."""
        skipped, bad = int(self.skipped), int(self.bad_run)
        if skipped > self.skips_logged:
            log.warning("Skipped %d step(s) with a non-finite loss or gradient (%d in all, now at step %d)",
                        skipped - self.skips_logged, skipped, self.result.steps)
            self.skips_logged = skipped
        if bad < self.cfg.nan_patience:
            return False
        trainstate.rollback(self, bad)
        return True

    # ------------------------------------------------------------ saving

    def _save(self, path: Path) -> None:
        if not self.weights_finite():  # never write a model with NaN/inf weights
            log.warning("Not saving %s: the weights hold NaN/inf values", path)
            return
        if path == self.out:
            self.saved_out = True
        self.saved_paths.add(path)
        if not self.main:  # the weights are the same in every process: process 0 writes them
            return
        res = self.result
        meta = {**self.meta, "steps": res.steps, "epochs": round(res.epochs_done, 4), "tokens_seen": res.tokens,
                "val_loss": None if math.isnan(res.last_val) else res.last_val,
                "best_val_loss": res.best_val if math.isfinite(res.best_val) else None, "train_config": asdict(self.cfg),
                "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.saver.submit(path, self.model, self.tokenizer, meta)

    def _save_last(self) -> None:
        if self.last is not None:
            self._save(self.last)
        if self.out is not None and not self.saved_out:  # no validation ran: the output is the latest weights
            with self.averaged():
                self._save(self.out)
        self.saver.wait()

    def _checkpoint_due(self) -> bool:
        cfg = self.cfg
        return self.ckpt_dir is not None and (
            self.ckpt_pending or bool(cfg.checkpoint_every and self.result.steps % cfg.checkpoint_every == 0)
            or bool(cfg.checkpoint_minutes and self.clock() - self.last_ckpt >= 60 * cfg.checkpoint_minutes))
