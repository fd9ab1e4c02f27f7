"""Training: TrainConfig (config.py), the loop (trainer.py) built from one step body (step.py,
eager; graph_step.py, the same body as a CUDA graph), optimizers (optim.py, adamw.py),
learning-rate schedules (schedule.py), the weight average (ema.py), data parallelism
(distributed.py) and resumable checkpoints (state.py).

Imports model/, kernels/ (through kernels/select.py), data/, tokenizers/ and util/; never
generate/ or the CLI. It does not parse flags: runner.py and cli.py build its configs.
"""

from .config import TrainConfig
from .step import evaluate, train_step
from .trainer import Trainer, TrainResult, seed_everything

__all__ = ["TrainConfig", "TrainResult", "Trainer", "evaluate", "seed_everything", "train_step"]
