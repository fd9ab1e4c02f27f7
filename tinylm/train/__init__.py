"""Training: TrainConfig (config.py), the loop (trainer.py) built from one step body (train/step.py,
eager; train/graph_step.py, the same body as a CUDA graph), optimizers (train/optim.py, train/adamw.py),
learning-rate schedules (train/schedule.py), the weight average (train/ema.py), data parallelism
(train/distributed.py) and resumable checkpoints (state.py).

Imports model/, kernels/ (through kernels/select.py), data/, tokenizers/ and util/; never
generate/ or the CLI. It does not parse flags: runner.py and cli.py build its configs.
"""

from .config import TrainConfig
from .step import evaluate, train_step
from .trainer import Trainer, TrainResult, seed_everything

__all__ = ["TrainConfig", "TrainResult", "Trainer", "evaluate", "seed_everything", "train_step"]
