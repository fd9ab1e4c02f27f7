"""The training job from a text file to a saved model, with TinyLM's log (seed 000).

Shared by `tinylm train` and the classic `main.py -t`: read and check the dataset, build or load
the tokenizer and model, log the dataset / model / trainer summaries, train, and say where the
model went. Flag parsing stays in the entry points; the training loop stays in train.py.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .checkpoint import load_model
from .corpus import default_corpus
from .data import read_text, split_tokens
from .device import resolve_device
from .errors import UsageError
from .log import banner, log, summary
from .model import GPT, GPTConfig
from .tokenizers import CharTokenizer, Tokenizer
from .train import Trainer, TrainConfig, TrainResult, seed_everything

TOKENIZERS = ("char", "bpe", "gpt2")


@dataclass
class TrainJob:
    dataset: str | None  # None = the default corpus (fetched and cached)
    output: Path | None  # None = models/<dataset name>.model
    train: TrainConfig
    model: dict = field(default_factory=dict)  # GPTConfig fields (vocab_size comes from the tokenizer)
    init_model: Path | None = None  # continue training from this model file
    force: bool = False  # allow overwriting an existing output
    tokenizer: str = "char"
    vocab_size: int = 4096  # BPE only
    bpe_pattern: str = "gpt2"


def last_path(out: Path) -> Path:
    """Where the latest weights go beside the best ones: book.model -> book.last.model."""
    return out.with_name(f"{out.stem}.last{out.suffix or '.model'}")


def resolve_output(job: TrainJob, dataset: Path) -> Path:
    """The output path, checked so that nothing of the user's is overwritten by accident."""
    out = Path("models") / f"{dataset.stem}.model" if job.output is None else Path(job.output)
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; give a file path such as {out / 'model.model'}")
    if not out.parent.is_dir() and job.output is not None:
        raise UsageError(f"output folder {out.parent} does not exist; create it (mkdir -p {out.parent}) or choose another -o")
    same_as_init = job.init_model is not None and out.resolve() == Path(job.init_model).resolve()
    if out.exists() and not (job.force or same_as_init):
        raise UsageError(f"output {out} already exists; choose another -o, delete it, pass --force to overwrite, "
                         f"or continue training it with -m {out} -o {out}")
    return out


def build_tokenizer(job: TrainJob, text: str) -> Tokenizer:
    if job.tokenizer == "char":
        return CharTokenizer.train(text)
    if job.tokenizer == "bpe":
        from .tokenizers.bpe import train_bpe  # noqa: PLC0415 - optional path

        log.info("Training a BPE tokenizer (vocabulary %d)...", job.vocab_size)
        return train_bpe(text, job.vocab_size, pattern=job.bpe_pattern)
    if job.tokenizer == "gpt2":
        from .tokenizers.bpe import BPETokenizer  # noqa: PLC0415

        return BPETokenizer.gpt2()
    raise UsageError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {job.tokenizer!r}")


def log_model(model: GPT) -> None:
    c = model.cfg
    summary("Model", [("parameters", model.num_params()), ("embedding size", c.n_embd), ("context size", c.context_size),
                      ("transformers", c.n_layer), ("heads count", c.n_head), ("ff network size", c.ff_size),
                      ("dropout rate", c.dropout), ("positions", c.positions), ("activation", c.activation)])


def log_trainer(t: TrainConfig) -> None:
    summary("Trainer", [("max epoch", t.epochs or "-"), ("max steps", t.max_steps or "-"),
                        ("time budget", f"{t.time_budget:g} s" if t.time_budget else "-"), ("batch size", t.batch_size),
                        ("gradient accumulation", t.grad_accum), ("learning rate", t.lr), ("schedule", t.schedule),
                        ("beta1", t.beta1), ("beta2", t.beta2), ("weight decay", t.weight_decay)])


def run_training(job: TrainJob) -> TrainResult:
    # Everything that can fail on bad input is checked before the first log line, so a mistake
    # costs one clear error line and nothing else.
    dataset = Path(job.dataset) if job.dataset else default_corpus()
    text = read_text(dataset)
    out = resolve_output(job, dataset)
    device = resolve_device(job.train.device)
    seed_everything(job.train.seed)
    if job.init_model is not None:
        loaded = load_model(job.init_model)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        tokenizer = build_tokenizer(job, text)
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **job.model))
    ids = tokenizer.encode(text)
    T = model.cfg.context_size
    split = split_tokens(ids, job.train.val_fraction, T, source=f"dataset {dataset}")

    out.parent.mkdir(parents=True, exist_ok=True)  # only the default models/ can be missing here
    banner("TRAINING MODE", [("Dataset", dataset), ("Output", out), ("Device", device.type)])
    log.info("Loading dataset...")
    nbytes = len(text.encode("utf-8"))
    log.info("Done, loaded %d bytes (%.2f MB)", nbytes, nbytes / 2**20)
    if job.init_model is not None:
        log.info("Continuing training from %s (%d steps so far)", job.init_model, loaded.meta.get("steps", 0))
    summary("Dataset", [("vocabulary size", tokenizer.vocab_size), ("chunks", (len(split.train) - 1) // T),
                        ("chunk size", T), ("training tokens", len(split.train)), ("validation tokens", len(split.val))])
    log_model(model)
    log_trainer(job.train)
    meta = {"tinylm_version": __version__, "dataset": str(dataset),
            "dataset_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    trainer = Trainer(model, tokenizer, split, job.train, out=out, last=last_path(out), meta=meta)
    log.info("Switching to training loop")
    res = trainer.run()
    how = "Interrupted" if res.interrupted else "Training done"
    val = f", best validation loss {res.best_val:.4f} (perplexity {math.exp(min(res.best_val, 50)):.2f})" if res.best_val < math.inf else ""
    log.info("%s after %d steps in %.1f s%s", how, res.steps, res.elapsed, val)
    log.info("Saved the model to %s (best by validation) and the latest weights to %s", out, last_path(out))
    return res
