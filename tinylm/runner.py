"""The training job from a text file to a saved model, with TinyLM's log (seed 000).

Shared by `tinylm train` and the classic `main.py -t`: read and check the dataset, pick what to
start from (a new model, a model file's weights, or a checkpoint to resume exactly), check that a
checkpoint fits the run, log the dataset / model / trainer summaries, train, and say where the
model went. Under torchrun it joins the process group first (train/distributed.py): every process runs
the same checks and builds the same model, process 0 alone fetches and caches files before the
others read them, and only process 0 logs. Flag parsing stays in the entry points; the training
loop stays in train/trainer.py and the checkpoint format in train/state.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import __version__
from .model.files import load_model
from .generate.chat import format_qa, load_qa_json
from .data.corpus import default_corpus
from .data.batches import ChunkBatches, split_tokens
from .data.tokenfile import TextInfo, scan_text, token_file
from .data.tokenstream import split_memmap
from .report.metrics import MetricsWriter, check_tensorboard, metrics_path
from .tokenizers.base import BOS, EOS
from .util.device import resolve_device
from .train.distributed import Dist, setup, shutdown
from .util.errors import UsageError
from .util.files import OutputLock, inside, same_file, stale_temps, writable_folder
from .util.log import banner, log, summary
from .model.gpt import GPT, GPTConfig
from .tokenizers import CharTokenizer, Tokenizer
from .tokenizers import from_dict as tokenizer_from_dict
from .train.memory import check_cpu_training_fits
from .train.config import check_device
from .train.trainer import Trainer, TrainConfig, TrainResult, seed_everything
from .train.state import (BEST, check_resumable, checkpoint_dir, latest_usable, list_checkpoints, load_checkpoint, mismatches,
                         restore_trainer, text_sha256, tokenizer_sha256)

TOKENIZERS = ("char", "bpe", "gpt2")


@dataclass
class TrainJob:
    dataset: str | None  # None = the default corpus (fetched and cached)
    output: Path | None  # None = models/<dataset name>.model
    train: TrainConfig
    model: dict = field(default_factory=dict)  # GPTConfig fields (vocab_size comes from the tokenizer)
    init_model: Path | None = None  # continue training from this model file
    force: bool = False  # allow overwriting an existing output (and replacing its checkpoints)
    tokenizer: str = "char"
    vocab_size: int = 4096  # BPE only
    bpe_pattern: str = "gpt2"
    resume: str | None = None  # "auto" = the output's checkpoint folder; else a checkpoint file or folder
    resume_or_continue: bool = False  # main.py -t -m: resume init_model's checkpoint if one fits, else its weights
    ignore_mismatch: bool = False  # resume even if the data or config differ from the checkpoint's
    qa: bool = False  # the dataset is a Q&A JSON file (seed 001), trained as <BOS>Question: q\nAnswer: a<EOS>
    tensorboard: Path | None = None  # also write TensorBoard events to this folder (the metrics file is always written)


@dataclass
class Start:
    """What a run starts from: the model and tokenizer, and a checkpoint state when resuming."""
    model: GPT
    tokenizer: Tokenizer
    state: dict | None = None  # trainstate checkpoint to resume exactly
    source: Path | None = None  # the checkpoint file resumed
    notes: list = field(default_factory=list)  # lines to log once the banner is out
    warnings: list = field(default_factory=list)  # ... and warnings (a damaged checkpoint skipped)
    replace: list = field(default_factory=list)  # checkpoints of another run in our folder, replaced by ours


def last_path(out: Path) -> Path:
    """Where the latest weights go beside the best ones: book.model -> book.last.model."""
    return out.with_name(f"{out.stem}.last{out.suffix or '.model'}")


def _resume_folder(job: TrainJob, out: Path) -> Path | None:
    """The checkpoint folder --resume reads (None when not resuming or resuming a single file)."""
    if job.resume is None:
        return None
    if job.resume == "auto":
        return checkpoint_dir(out)
    p = Path(job.resume)
    return p if p.is_dir() else p.parent


def _inputs(job: TrainJob, dataset: Path) -> list[tuple[str, str, Path]]:
    """(what, flag, path) of every file the run reads, which none of its outputs may be."""
    found = [("the dataset", "-d", dataset)]
    if job.init_model is not None:
        found.append(("the model", "-m", Path(job.init_model)))
    if job.resume not in (None, "auto"):
        found.append(("the checkpoint", "--resume", Path(job.resume)))
    return found


def _check_not_inputs(job: TrainJob, out: Path, dataset: Path) -> None:
    """No output of the run may be one of its inputs, whatever the flags: a resolved path or an
    inode in common (a symlink or hard link) is refused. The one exception is -m X -o X, which
    continues model X: it is read whole before anything is written, and then replaced atomically."""
    ckpts = checkpoint_dir(out)
    for what, flag, path in _inputs(job, dataset):
        for written, role in ((out, f"output {out} is"), (last_path(out), f"the latest weights of -o {out} go to {last_path(out)}, which is"),
                              (metrics_path(out), f"the metrics of -o {out} go to {metrics_path(out)}, which is")):
            if same_file(written, path) and not (flag == "-m" and written == out):
                raise UsageError(f"{role} {what} ({flag} {path}); no flag lets an output replace an input of the run: choose another -o")
        if inside(path, ckpts) and flag != "--resume":
            raise UsageError(f"{what} ({flag} {path}) lies in {ckpts}, where the checkpoints of -o {out} go; move it or choose another -o")


def resolve_output(job: TrainJob, dataset: Path) -> Path:
    """The output path, checked so that nothing of the user's is overwritten by accident: no
    output (the model, its .last sibling, the checkpoint folder) may be an input of the run, and
    an existing output is replaced only with --force, by continuing that same model (-m X -o X),
    or by resuming the run that wrote it (--resume with its checkpoints beside it)."""
    out = Path("models") / f"{dataset.stem}.model" if job.output is None else Path(job.output)
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; give a file path such as {out / 'model.model'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"output folder {out.parent} is a file, not a folder; choose another -o")
    if not out.parent.is_dir() and job.output is not None:
        raise UsageError(f"output folder {out.parent} does not exist; create it (mkdir -p {out.parent}) or choose another -o")
    ckpts = checkpoint_dir(out)
    if ckpts.exists() and not ckpts.is_dir():
        raise UsageError(f"{ckpts} is a file, but the checkpoints of {out} go in a folder of that name; move it or choose another -o")
    _check_not_inputs(job, out, dataset)
    same_as_init = job.init_model is not None and out.resolve() == Path(job.init_model).resolve()
    own_run = _resume_folder(job, out) is not None and _resume_folder(job, out).resolve() == ckpts.resolve()
    if out.exists() and not (job.force or same_as_init or own_run):
        raise UsageError(f"output {out} already exists; choose another -o, delete it, pass --force to overwrite, "
                         f"or continue training it with -m {out} -o {out}")
    last = last_path(out)
    if last.is_dir():
        raise UsageError(f"{last} is a directory, but the latest weights of -o {out} go in a file of that name; move it or choose another -o")
    if (last.exists() or last.is_symlink()) and not (job.force or same_as_init or own_run):
        raise UsageError(f"{last} already exists, and the latest weights of -o {out} would replace it; choose another -o, "
                         "delete it, or pass --force to overwrite")
    metrics = metrics_path(out)  # a resumed run appends to it; any other run starts it afresh
    if metrics.is_dir() or metrics.exists() and not metrics.is_file():
        raise UsageError(f"{metrics} is not a regular file, but the metrics of -o {out} go in a file of that name; "
                         "move it or choose another -o")
    # (with checkpoints there, _earlier_checkpoints refuses the run instead, saying how to resume it)
    if (metrics.exists() or metrics.is_symlink()) and not (job.force or same_as_init or own_run or list_checkpoints(ckpts)):
        raise UsageError(f"{metrics} already exists, and the metrics of -o {out} would replace it; choose another -o, "
                         "delete it, pass --force to overwrite, or --resume the run that wrote it")
    if out.parent.is_dir():  # a read-only or foreign folder fails here, not after the first hour of training
        why = writable_folder(out.parent)
        if why is not None:
            raise UsageError(f"output folder {out.parent} is not writable ({why}); choose another -o or fix its permissions")
    return out


def lock_output(out: Path) -> OutputLock:
    """Take the output's lock for the whole run, so two runs never write one model: a second run
    stops at once with one line naming the process that holds it."""
    lock = OutputLock(out)
    try:
        holder = lock.acquire()
    except OSError as e:
        raise UsageError(f"cannot create the lock file {lock.path} ({e.strerror or e}); fix the folder's permissions "
                         "or choose another -o") from None
    if holder is not None:
        raise UsageError(f"output {out} is being written by another tinylm run (process {holder}); wait for it to end, "
                         "or choose another -o")
    return lock


def remove_stale_temps(out: Path) -> list[str]:
    """Remove the temp files a killed save left beside the outputs and in the checkpoint folder
    (their process is gone; a live one's are left alone). Returns a note per file removed."""
    names = {out.name, last_path(out).name, metrics_path(out).name}
    found = stale_temps(out.parent, names) + stale_temps(checkpoint_dir(out))
    notes = []
    for path in found:
        try:
            path.unlink()
            notes.append(f"Removed {path}, a temp file left by a save that was killed")
        except OSError:
            pass
    return notes


def build_tokenizer(job: TrainJob, source: str | TextInfo) -> Tokenizer:
    """A new tokenizer for the training text: `source` is the text itself, or a streamed scan of
    the file (enough for a char vocabulary; BPE training then streams the file once more)."""
    if job.tokenizer == "char":
        return CharTokenizer(sorted(source.chars)) if isinstance(source, TextInfo) else CharTokenizer.train(source)
    if job.tokenizer == "bpe":
        from .data.tokenfile import train_bpe_file  # noqa: PLC0415 - optional path
        from .tokenizers.bpe import train_bpe  # noqa: PLC0415

        # logged after, not before: a --vocab-size the text cannot fill must end in one error line
        t0 = time.time()
        if isinstance(source, TextInfo):  # counted block by block: the text is never held whole
            tokenizer = train_bpe_file(source.path, job.vocab_size, pattern=job.bpe_pattern, info=source)
        else:
            tokenizer = train_bpe(source, job.vocab_size, pattern=job.bpe_pattern)
        log.info("Trained a BPE tokenizer (vocabulary %d) in %.1f s", job.vocab_size, time.time() - t0)
        return tokenizer
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


def _checkpoint_start(path: Path, state: dict) -> Start:
    cfg = GPTConfig.from_dict(state["model_config"])
    model = GPT(cfg)
    model.load_state_dict(state["model"])
    return Start(model, tokenizer_from_dict(json.loads(state["tokenizer"])), state, path)


def _skipped(problems: list[str], used: str) -> list[str]:
    """A warning for each newer checkpoint that did not load, saying which, why, and what is used:
    e.g. "Skipped a checkpoint that does not load: checkpoint X is damaged or not a tinylm
    checkpoint (a truncated or corrupt archive); resuming from checkpoint Y instead"."""
    return [f"Skipped a checkpoint that does not load: {problem.replace('; resume from an earlier one', '')}; {used} instead"
            for problem in problems]


def _find_resume(job: TrainJob, out: Path) -> tuple[Path, dict, list[str]]:
    """The checkpoint --resume names: a file, or the newest loadable one in a folder; and a
    warning for every newer one skipped because it does not load."""
    if job.resume not in (None, "auto") and not Path(job.resume).is_dir():
        state = load_checkpoint(job.resume)
        check_resumable(job.resume, state)  # every nested field the resume will read
        return Path(job.resume), state, []
    folder = _resume_folder(job, out)
    found, problems = latest_usable(folder)
    if found is None:
        why = f" ({problems[0]})" if problems else "" if folder.is_dir() else " (the folder does not exist)"
        raise UsageError(f"no checkpoint to resume in {folder}{why}; check -o (checkpoints live in <output>.ckpt), "
                         "or train without --resume to start a new run")
    return found[0], found[1], _skipped(problems, f"resuming from checkpoint {found[0]}")


def _resume(job: TrainJob, out: Path, data_sha: str, world: int) -> Start:
    """tinylm train --resume: the checkpoint must fit the data and flags, unless --ignore-mismatch."""
    path, state, skipped = _find_resume(job, out)
    start = _checkpoint_start(path, state)
    start.warnings += skipped
    now_model = GPTConfig(**{**job.model, "vocab_size": start.tokenizer.vocab_size}).to_dict()
    diffs = mismatches(state, asdict(job.train), now_model, data_sha, world=world)
    if diffs and not job.ignore_mismatch:
        raise UsageError(f"cannot resume from {path}: this run differs in {'; '.join(diffs)}; "
                         "give the same data and flags, or pass --ignore-mismatch to resume anyway")
    if diffs:
        start.notes.append(f"Resuming despite differences ({'; '.join(diffs)}): the new data and training flags apply, "
                           "the checkpoint's model shape is kept")
    return start


def _resume_or_continue(job: TrainJob, data_sha: str, world: int) -> Start:
    """main.py -t -m MODEL: resume exactly from MODEL's checkpoint when it has one that fits,
    else continue from MODEL's weights (a new optimizer, schedule and data order)."""
    init = Path(job.init_model)
    found, problems = latest_usable(checkpoint_dir(init))
    if found is not None and not init.exists():  # killed before the model file was first written
        path, state = found
        diffs = mismatches(state, asdict(job.train), state["model_config"], data_sha, world=world)
        if diffs:
            raise UsageError(f"{init} does not exist, and its checkpoint {path} does not fit this run ({'; '.join(diffs)}); "
                             "give the data and settings it was trained with, or drop -m to train a new model")
        start = _checkpoint_start(path, state)
        start.warnings += _skipped(problems, f"resuming from checkpoint {path}")
        return start
    loaded = load_model(init)
    start = Start(loaded.model, loaded.tokenizer, warnings=_skipped(problems, f"continuing from the weights of {init}" if found is None
                                                                         else f"trying checkpoint {found[0]}"))
    if found is None:
        start.notes.append(f"No checkpoint for {init}; continuing from its weights ({loaded.meta.get('steps', 0)} steps so far)")
        return start
    path, state = found
    diffs = mismatches(state, asdict(job.train), loaded.model.cfg.to_dict(), data_sha, tokenizer_sha256(loaded.tokenizer),
                       world=world)
    if diffs:
        start.notes.append(f"Checkpoint {path} does not fit this run ({'; '.join(diffs)}); continuing from the weights of {init}")
        return start
    resumed = _checkpoint_start(path, state)
    resumed.warnings += start.warnings
    return resumed


def _earlier_checkpoints(job: TrainJob, out: Path, start: Start) -> list[Path]:
    """Checkpoints in the output's folder that this run must not mix with its own: another run's
    (replaced with --force or when continuing the same model, else refused), or, after resuming
    an older checkpoint, the newer ones of the abandoned course."""
    folder = checkpoint_dir(out)
    found = list_checkpoints(folder)
    if start.state is not None and start.source.parent.resolve() == folder.resolve():
        return [p for step, p in found if step > start.state["step"]]
    if not found:
        return []
    same_as_init = job.init_model is not None and out.resolve() == Path(job.init_model).resolve()
    if not (job.force or same_as_init):
        raise UsageError(f"{folder} holds checkpoints of an earlier run (up to step {found[-1][0]}); continue it with --resume "
                         f"(main.py: -t -m {out}), start over with --force, or choose another -o")
    start.notes.append(f"This run's checkpoints will replace the earlier ones in {folder}")
    return [p for _, p in found] + ([folder / BEST] if (folder / BEST).exists() else [])


def _starting_point(job: TrainJob, text: str | TextInfo, out: Path, data_sha: str, world: int = 1) -> Start:
    if job.resume is not None and job.init_model is not None:
        raise UsageError("--resume continues a checkpoint and -m starts from a model's weights; choose one")
    if job.ignore_mismatch and job.resume is None:
        raise UsageError("--ignore-mismatch applies only with --resume; add --resume or drop it")
    if job.resume is not None:
        start = _resume(job, out, data_sha, world)
    elif job.init_model is not None and job.resume_or_continue:
        start = _resume_or_continue(job, data_sha, world)
    elif job.init_model is not None:
        loaded = load_model(job.init_model)
        start = Start(loaded.model, loaded.tokenizer,
                      notes=[f"Continuing training from {job.init_model} ({loaded.meta.get('steps', 0)} steps so far)"])
    else:
        tokenizer = build_tokenizer(job, text)
        start = Start(GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **job.model)), tokenizer)
    start.replace = _earlier_checkpoints(job, out, start)
    return start


def run_training(job: TrainJob) -> TrainResult:
    dist = setup(job.train.device)  # None unless started by torchrun
    level = log.level
    if dist is not None and not dist.main:
        log.setLevel(logging.ERROR)  # process 0 tells the story; the others speak only of failures
    try:
        return _run_training(job, dist)
    finally:
        log.setLevel(level)
        shutdown(dist)


def _main_first(dist: Dist | None):
    return dist.main_first() if dist is not None else contextlib.nullcontext()


def _run_training(job: TrainJob, dist: Dist | None) -> TrainResult:
    # Everything that can fail on bad input is checked before the first log line, so a mistake
    # costs one clear error line and nothing else.
    check_tensorboard(job.tensorboard)
    with _main_first(dist):  # one process fetches the default corpus into the cache
        dataset = Path(job.dataset) if job.dataset else default_corpus()
    if job.qa:
        text = "".join(format_qa(q, a) for q, a in load_qa_json(dataset))
        data_sha, nbytes = text_sha256(text), len(text.encode("utf-8"))
        # the tokenizer is built from the text without the Q&A markers, which are special tokens
        source: str | TextInfo = text.replace(BOS, "").replace(EOS, "")
    else:  # one streamed pass: checks, hash, characters; the text is never held whole for a char model
        source = info = scan_text(dataset)
        data_sha, nbytes = info.sha256, info.nbytes
    out = resolve_output(job, dataset)
    with contextlib.ExitStack() as held:
        locked = []

        def lock() -> None:  # only the process that writes files takes the output's lock, once
            if (dist is None or dist.main) and not locked:
                out.parent.mkdir(parents=True, exist_ok=True)  # only the default models/ can be missing here
                held.callback(lock_output(out).release)
                locked.append(True)

        if out.parent.is_dir():  # else (the default models/) once every check has passed, so a mistake creates nothing
            lock()
        return _train_locked(job, dist, dataset, out, source, data_sha, nbytes, text if job.qa else None, lock)


def _train_locked(job: TrainJob, dist: Dist | None, dataset: Path, out: Path, source: str | TextInfo, data_sha: str,
                  nbytes: int, text: str | None, lock) -> TrainResult:
    """The run once its output is checked and locked (`lock()` takes the lock if that could not
    be done before): the starting point, the loop, the summary."""
    info = source
    device = resolve_device(job.train.device) if dist is None else dist.device
    check_device(job.train, device)
    world = 1 if dist is None else dist.world
    seed_everything(job.train.seed)
    start = _starting_point(job, source, out, data_sha, world)
    model, tokenizer = start.model, start.tokenizer
    if dist is not None:  # the same initial weights everywhere (Trainer broadcasts them too), its own dropout in each
        seed_everything(job.train.seed + dist.rank)
    T = model.cfg.context_size
    if job.qa:
        split = split_tokens(tokenizer.encode(text, allow_special=True), job.train.val_fraction, T, source=f"Q&A file {dataset}")
    else:  # tokenized once into a memory-mapped file, cached by content and tokenizer (data/tokenfile.py)
        with _main_first(dist):  # one process writes the cached token file, the others then read it
            ids = token_file(dataset, tokenizer, info)
        split = split_memmap(ids, job.train.val_fraction, T, source=f"dataset {dataset}")
    # text too short to give every process a batch, or one optimizer step its micro-batches: say so
    # before the first log line
    batches = ChunkBatches(split.train, T, job.train.batch_size, rank=0 if dist is None else dist.rank, world=world)
    if job.train.batch_size > batches.num_chunks:  # every batch would hold all the chunks: say so, count truly
        start.notes.append(f"--batch-size {job.train.batch_size} is more than the {batches.num_chunks} chunks of the "
                           f"training text; each batch holds all {batches.num_chunks}")
        job.train = replace(job.train, batch_size=batches.num_chunks)
    if batches.batches_per_epoch < job.train.grad_accum:
        raise UsageError(f"one epoch of the training text holds {batches.batches_per_epoch} micro-batch(es) of "
                         f"--batch-size {job.train.batch_size}, fewer than --grad-accum {job.train.grad_accum}; give more "
                         "text, or a smaller --grad-accum or --batch-size")
    if device.type == "cpu":
        check_cpu_training_fits(model.cfg, model.num_params(), job.train.batch_size)

    lock()
    removed = remove_stale_temps(out) if dist is None or dist.main else []
    where = device.type if dist is None else f"{device.type}, {world} process{'es' if world > 1 else ''} (torchrun, data parallel)"
    banner("TRAINING MODE", [("Dataset", dataset), ("Output", out), ("Device", where)])
    log.info("Loading dataset...")
    log.info("Done, loaded %d bytes (%.2f MB)", nbytes, nbytes / 2**20)
    for note in removed + start.notes:
        log.info("%s", note)
    for warning in start.warnings:
        log.warning("%s", warning)
    summary("Dataset", [("vocabulary size", tokenizer.vocab_size), ("chunks", (len(split.train) - 1) // T),
                        ("chunk size", T), ("training tokens", len(split.train)), ("validation tokens", len(split.val))])
    log_model(model)
    log_trainer(job.train)
    if dist is not None:
        log.info("Data parallel: each step trains on %d processes x %d micro-batch(es) x %d sequences", world,
                 job.train.grad_accum, job.train.batch_size)
    meta = {"tinylm_version": __version__, "dataset": str(dataset), "dataset_sha256": data_sha, "dataset_bytes": nbytes,
            "dataset_tokens": len(split.train) + len(split.val), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    trainer = Trainer(model, tokenizer, split, job.train, out=out, last=last_path(out), meta=meta,
                      checkpoints=checkpoint_dir(out), dist=dist)
    trainer.replace_ckpts = start.replace
    if start.state is not None:
        restore_trainer(trainer, start.state)
        approx = " (approximately: a --time budget follows the wall clock)" if job.train.time_budget else ""
        log.info("Resuming exactly%s from checkpoint %s (step %d, epoch %d)", approx, start.source, trainer.result.steps,
                 trainer.epoch + 1)
    log.info("Switching to training loop")
    if dist is None or dist.main:  # a resumed run appends to its metrics; a new one starts them afresh
        trainer.metrics = MetricsWriter(metrics_path(out), append=start.state is not None, resume_step=trainer.result.steps,
                                        tensorboard=job.tensorboard)
    try:
        res = trainer.run()
    finally:
        if trainer.metrics is not None:
            trainer.metrics.close()
    how = "Interrupted" if res.interrupted else "Training done"
    val = f", best validation loss {res.best_val:.4f} (perplexity {math.exp(min(res.best_val, 50)):.2f})" if res.best_val < math.inf else ""
    log.info("%s after %d steps in %.1f s%s", how, res.steps, res.elapsed, val)
    _say_saved(trainer, out)
    return res


def _say_saved(trainer: Trainer, out: Path) -> None:
    """Log what was saved, and only that; a run that ends with no model to save is an error."""
    last = last_path(out)
    if not trainer.saved_out:
        raise UsageError(f"training ended with no model to save (the weights hold NaN/inf values at step {trainer.result.steps}), "
                         f"so {out} was not written; try a lower --lr (now {trainer.cfg.lr:g}), a longer --warmup or --grad-clip 1")
    if last in trainer.saved_paths:
        log.info("Saved the model to %s (best by validation) and the latest weights to %s", out, last)
    else:
        log.info("Saved the model to %s (best by validation); the latest weights were not saved (they hold NaN/inf values)", out)
