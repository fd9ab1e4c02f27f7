"""TrainConfig: every setting of a training run, validated where it is built.

Owns the defaults and the checks (each message names the CLI flag it came from). Knows nothing
about models or data; train/trainer.py runs a config, checkpoints store `asdict(cfg)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..util.errors import UsageError
from .schedule import SCHEDULES

OPTIMIZERS = ("adamw", "muon")
COMPILE_MODES = ("off", "model", "blocks")
# field -> (the `tinylm train` argparse dest, the flag a user types), as model/config.py's FLAGS
_RENAMED = {"max_steps": ("steps", "--steps"), "time_budget": ("time", "--time"), "warmup_steps": ("warmup", "--warmup")}
FLAGS = {f: _RENAMED.get(f, (f, "--" + f.replace("_", "-"))) for f in (
    "epochs", "max_steps", "time_budget", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "schedule",
    "patience", "optimizer", "beta1", "beta2", "weight_decay", "grad_clip", "ema", "eval_interval", "val_fraction",
    "seed", "device", "dtype", "compile", "cuda_graph", "log_interval", "checkpoint_every", "checkpoint_minutes",
    "keep_checkpoints")}


def check_device(cfg: "TrainConfig", device) -> None:
    """The settings that depend on where training runs, checked once the device is known (the
    runner calls this before reading the data, the Trainer for Python callers)."""
    if cfg.cuda_graph and device.type != "cuda":
        raise UsageError("--cuda-graph needs a CUDA device; drop it to train on the CPU")


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
    ema: float = 0.0  # 0 = off; else evaluate and save a moving average of the weights with this decay (train/ema.py)
    eval_interval: int = 0  # steps between validations; 0 = once per epoch
    val_fraction: float = 0.1  # last fraction of the text held out
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: str = "off"  # off | model (torch.compile the whole training forward) | blocks (each block alone)
    cuda_graph: bool = False  # capture the whole step as one CUDA graph (CUDA + AdamW only; see train/graph_step.py);
    # with compile=model the graph records the compiled kernels
    log_interval: int = 10  # steps between log lines when not on a terminal (and between checks for skipped steps)
    checkpoint_every: int = 0  # steps between checkpoints; 0 = off
    checkpoint_minutes: float = 10.0  # minutes between checkpoints; 0 = off
    keep_checkpoints: int = 3  # newest checkpoints kept (plus best.ckpt)
    nan_patience: int = 3  # non-finite steps in a row (seen at a log interval) that trigger a rollback
    max_rollbacks: int = 3  # rollbacks before the run stops as diverged

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
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"--beta1/--beta2 must be in [0, 1), got {self.beta1}, {self.beta2}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (0 <= self.ema < 1, f"--ema must be in [0, 1) (0 = off; e.g. 0.995), got {self.ema}"),
            (self.eval_interval >= 0, f"--eval-interval must be >= 0, got {self.eval_interval}"),
            (0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.log_interval >= 1, f"--log-interval must be at least 1, got {self.log_interval}"),
            (self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 steps (0 = off), got {self.checkpoint_every}"),
            (self.checkpoint_minutes >= 0, f"--checkpoint-minutes must be >= 0 (0 = off), got {self.checkpoint_minutes}"),
            (self.keep_checkpoints >= 1, f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}"),
            (self.nan_patience >= 1, f"nan_patience must be at least 1, got {self.nan_patience}"),
            (self.max_rollbacks >= 0, f"max_rollbacks must be >= 0, got {self.max_rollbacks}"),
        ]
        for ok, msg in rules:
            if not ok:
                raise UsageError(msg)
