"""Training: `TrainConfig` and `train()`, built from small named steps.

Owns the optimizer (AdamW, decay on matrices only), the schedule in use, the step (micro-batches
with gradient accumulation, clipping, bf16 autocast on CUDA), exact evaluation on the validation
split, saving the best and last model, and stopping (epochs, steps or time, whichever comes
first, or a SIGINT/SIGTERM, which saves and returns). It does not parse flags or read files.
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

from .checkpoint import BackgroundSaver
from .corpus import cache_dir
from .data import ChunkBatches, TokenSplit, eval_windows
from .device import autocast_dtype, configure, resolve_device
from .errors import UsageError
from .log import Progress, log
from .model import GPT
from .schedule import PlateauState, cosine_lr, plateau_update
from .tokenizers import Tokenizer

SCHEDULES = ("cosine", "plateau", "constant")
OPTIMIZERS = ("adamw", "muon")
COMPILE_MODES = ("off", "model", "blocks")


@dataclass
class TrainConfig:
    epochs: int = 0  # 0 = no epoch limit
    max_steps: int = 0  # optimizer steps; 0 = no step limit
    time_budget: float = 0.0  # seconds of training; 0 = no time limit
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4  # cosine floor; plateau never halves below it
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | plateau | constant
    patience: int = 0  # plateau: epochs without improvement tolerated before halving
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    eval_interval: int = 0  # steps between validations; 0 = once per epoch
    val_fraction: float = 0.1  # last fraction of the text held out
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: str = "off"  # off | model (torch.compile the whole training forward) | blocks (each block alone)
    cuda_graph: bool = False  # capture the whole step as one CUDA graph (CUDA + AdamW only; see graph_step.py)
    log_interval: int = 10  # steps between log lines when not on a terminal

    def __post_init__(self):
        rules = [
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.max_steps >= 0, f"--steps must be >= 0, got {self.max_steps}"),
            (self.time_budget >= 0, f"--time must be >= 0 seconds, got {self.time_budget}"),
            (self.epochs or self.max_steps or self.time_budget, "give at least one of --epochs, --steps or --time"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"--min-lr must be in [0, --lr], got {self.min_lr}"),
            (self.warmup_steps >= 0, f"--warmup must be >= 0, got {self.warmup_steps}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.compile in COMPILE_MODES, f"--compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"),
            (not (self.cuda_graph and self.optimizer != "adamw"), "--cuda-graph works with --optimizer adamw only"),
            (not (self.cuda_graph and self.compile != "off"), "--cuda-graph and --compile are alternatives; choose one"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"--beta1/--beta2 must be in [0, 1), got {self.beta1}, {self.beta2}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (self.eval_interval >= 0, f"--eval-interval must be >= 0, got {self.eval_interval}"),
            (0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.log_interval >= 1, f"--log-interval must be at least 1, got {self.log_interval}"),
        ]
        for ok, msg in rules:
            if not ok:
                raise UsageError(msg)


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


class Optimizers:
    """Several optimizers stepped as one (Muon covers some parameters, AdamW the rest)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, st in zip(self.optimizers, states):
            o.load_state_dict(st)


def param_groups(model: GPT, cfg: TrainConfig, exclude: set[int] = frozenset()) -> list[dict]:
    """AdamW groups: weight decay on matrices (embeddings, linear weights) only; decaying biases
    and LayerNorm gains only pulls them toward zero for no benefit."""
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> Optimizers:
    """AdamW over `param_groups`. With cfg.optimizer == "muon", the blocks' weight matrices go to
    Muon instead (Jordan et al. 2024: orthogonalised momentum), its learning rate matched to
    AdamW's update size so one --lr serves both."""
    hidden = [p for b in model.blocks for p in b.parameters() if p.dim() == 2] if cfg.optimizer == "muon" else []
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        param_groups(model, cfg, {id(p) for p in hidden}), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")]
    if hidden:
        opts.append(torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"))
    return Optimizers(opts)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, context: int, batch_size: int, device: torch.device,
             dtype: torch.dtype | None = None) -> float:
    """Mean next-token cross-entropy over every token of `tokens` (exact, not sampled)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    for x, y in eval_windows(tokens, context, batch_size):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            _, loss = model(x, y)
        n = int((y != -1).sum())
        total += loss.double() * n
        count += n
    model.train(was_training)
    return float(total) / max(count, 1)


def train_step(model, opt, micro_batches, cfg: TrainConfig, device, dtype) -> torch.Tensor:
    """One optimizer step over `micro_batches` [(x, y), ...]; returns the mean loss as a device
    tensor (no host sync)."""
    total = torch.zeros((), device=device)
    for x, y in micro_batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            _, loss = model(x, y)
        # subtle: divide so the accumulated gradient is the mean over all micro-batches, equal to
        # the gradient of one batch len(micro_batches) times larger.
        (loss / len(micro_batches)).backward()
        total += loss.detach()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total / len(micro_batches)


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
    loss; the current weights when there is no validation) and `last` (latest weights)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, split: TokenSplit, cfg: TrainConfig,
                 out: Path | None = None, last: Path | None = None, meta: dict | None = None):
        self.cfg, self.tokenizer, self.split = cfg, tokenizer, split
        self.out, self.last, self.meta = out, last, dict(meta or {})
        self.device = resolve_device(cfg.device)
        configure(self.device)
        self.dtype = autocast_dtype(self.device, cfg.dtype)
        self.model = model.to(self.device)
        T = model.cfg.context_size
        self.graphed = None
        if cfg.cuda_graph:
            if self.device.type != "cuda":
                raise UsageError("--cuda-graph needs a CUDA device; drop it to train on the CPU")
            from .graph_step import GraphedStep  # noqa: PLC0415

            self.graphed = GraphedStep(self.model, param_groups(self.model, cfg), cfg, self.dtype, (cfg.batch_size, T))
            self.opt = self.graphed.opt
        else:
            self.opt = make_optimizer(self.model, cfg, self.device)
        # The training forward: evaluation always runs the eager self.model, so switching between
        # train and eval never recompiles.
        self.fwd = self.model
        if cfg.compile != "off":
            # keep compiled kernels between runs, so only the first run pays the full compile time
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            if cfg.compile == "blocks":
                self.model.compile_blocks()
            else:
                self.fwd = torch.compile(self.model, dynamic=False)
        # the token stream lives on the device, so batches are gathered there with no copies
        self.batches = ChunkBatches(split.train.to(self.device), T, cfg.batch_size, cfg.seed)
        self.steps_per_epoch = max(1, self.batches.batches_per_epoch // cfg.grad_accum)
        self.plateau = PlateauState(lr=cfg.lr)
        self.warmup_progress = 0.0
        self.result = TrainResult()
        self.saved_out = False
        self.saver = BackgroundSaver()

    def lr_for(self, step: int, progress: float) -> float:
        cfg = self.cfg
        if step == cfg.warmup_steps:
            self.warmup_progress = progress  # the cosine starts its decay from here
        if cfg.schedule == "cosine":
            return cosine_lr(step, progress, cfg.lr, cfg.min_lr, cfg.warmup_steps, self.warmup_progress)
        if step < cfg.warmup_steps:
            return self.plateau.lr * (step + 1) / cfg.warmup_steps
        return self.plateau.lr

    def run(self) -> TrainResult:
        cfg, res = self.cfg, self.result
        self.model.train()
        self.t0 = time.time()
        progress = Progress(cfg.log_interval)
        with StopFlag() as stop:
            epoch = 0
            while not self._done(epoch, res.steps):
                self._run_epoch(epoch, progress, stop)
                epoch += 1
                if stop.set:
                    break
        progress.clear()
        res.interrupted = stop.set
        res.elapsed = time.time() - self.t0
        if not stop.set and (not res.history or res.history[-1][0] != res.steps):
            self._validate()
        self._save_last()
        return res

    def _done(self, epoch: int, step: int) -> bool:
        cfg = self.cfg
        return bool((cfg.epochs and epoch >= cfg.epochs) or (cfg.max_steps and step >= cfg.max_steps)
                    or (cfg.time_budget and time.time() - self.t0 >= cfg.time_budget))

    def _run_epoch(self, epoch: int, progress: Progress, stop: StopFlag) -> None:
        cfg, res = self.cfg, self.result
        t_epoch, loss_sum, n = time.time(), torch.zeros((), device=self.device), 0
        batches = self.batches.epoch(epoch)
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.model.cfg.context_size
        for i in range(self.steps_per_epoch):
            frac = _progress(cfg, res.steps, epoch + i / self.steps_per_epoch, time.time() - self.t0)
            lr = self.lr_for(res.steps, frac)
            micro_batches = [next(batches) for _ in range(cfg.grad_accum)]
            if self.graphed is not None:
                loss = self.graphed(micro_batches, lr)
            else:
                for group in self.opt.param_groups:
                    group["lr"] = lr
                loss = train_step(self.fwd, self.opt, micro_batches, cfg, self.device, self.dtype)
            loss_sum += loss
            n += 1
            res.steps += 1
            res.tokens += tokens_per_step
            res.epochs_done = epoch + (i + 1) / self.steps_per_epoch
            if progress.wants(res.steps):
                progress.update(res.steps, loss.item(), lr, res.tokens, frac, time.time() - self.t0)
            if cfg.eval_interval and res.steps % cfg.eval_interval == 0:
                progress.clear()
                self._validate()
            if stop.set or self._done(epoch, res.steps):
                break
        progress.clear()
        avg = float(loss_sum) / max(n, 1)
        log.info("Epoch %d done in %.2f seconds, learning rate: %.6g, average loss: %.4f", epoch + 1, time.time() - t_epoch, lr, avg)
        if cfg.schedule == "plateau" and n == self.steps_per_epoch:
            self.plateau = plateau_update(self.plateau, avg, cfg.patience, 0.5, min_lr=cfg.min_lr)
        if not cfg.eval_interval and not stop.set:
            self._validate()

    def _validate(self) -> None:
        res = self.result
        if len(self.split.val) < 2:
            if self.out is not None:
                self._save(self.out)
            return
        val = evaluate(self.model, self.split.val, self.model.cfg.context_size, self.cfg.batch_size, self.device, self.dtype)
        res.last_val = val
        res.history.append((res.steps, time.time() - self.t0, val))
        improved = val < res.best_val
        log.info("Validation loss: %.4f, perplexity: %.2f (step %d, %.1f s)%s", val, math.exp(min(val, 50)), res.steps,
                 time.time() - self.t0, " (best so far)" if improved else "")
        if improved:
            res.best_val = val
            if self.out is not None:
                self._save(self.out)

    def _save(self, path: Path) -> None:
        res = self.result
        meta = {**self.meta, "steps": res.steps, "epochs": round(res.epochs_done, 4), "tokens_seen": res.tokens,
                "val_loss": None if math.isnan(res.last_val) else res.last_val, "train_config": asdict(self.cfg),
                "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.saver.submit(path, self.model, self.tokenizer, meta)
        if path == self.out:
            self.saved_out = True

    def _save_last(self) -> None:
        if self.last is not None:
            self._save(self.last)
        if self.out is not None and not self.saved_out:  # no validation ran: the output is the latest weights
            self._save(self.out)
        self.saver.wait()
