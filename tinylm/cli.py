"""`tinylm` command line: argparse subcommands that build configs and call the library.

    tinylm train     train a model on a text file (or the default corpus)
    tinylm generate  continue a prompt with a trained model
    tinylm chat      ask a Q&A-trained model questions, one per line
    tinylm eval      loss and perplexity of a model on a text file
    tinylm tokenizer train   train a BPE tokenizer and save it as JSON
    tinylm plot      loss and learning-rate curves of runs (report/plot.py)
    tinylm info      a model file's card (report/card.py)
    tinylm eval --copying    how much of a model's output is in its training text (report/copying.py)

Every UsageError becomes one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

from .util.errors import UsageError
from .util.log import log, setup_logging
from .cli_parser import MODEL_FLAGS, TRAIN_FLAGS, build_parser  # noqa: F401 - build_parser re-exported
from .interop import commands as interop_commands

from .report import card, copying, plot

def job_from_args(args: argparse.Namespace):
    """argparse namespace of `tinylm train` -> TrainJob (preset first, then explicit flags)."""
    from .util.device import resolve_device  # noqa: PLC0415
    from .presets import build_configs  # noqa: PLC0415
    from .runner import TrainJob  # noqa: PLC0415

    model_over = {field: getattr(args, flag) for flag, field in MODEL_FLAGS.items() if getattr(args, flag, None) is not None}
    train_over = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag, None) is not None}
    device = resolve_device(train_over.get("device", "auto"))
    model_kw, train_cfg = build_configs(args.preset, model_over, train_over, device.type)
    if args.model and any(getattr(args, f, None) is not None for f in MODEL_FLAGS):
        raise UsageError("model-shape flags (--layers, --embd, ...) cannot change a model given with -m; drop them, or drop -m to train a new model")
    return TrainJob(dataset=args.dataset, output=Path(args.output) if args.output else None, train=train_cfg,
                    model=model_kw, init_model=Path(args.model) if args.model else None, force=args.force,
                    tokenizer=args.tokenizer, vocab_size=args.vocab_size, resume=args.resume, qa=args.qa,
                    ignore_mismatch=args.ignore_mismatch,
                    tensorboard=Path(args.tensorboard) if getattr(args, "tensorboard", None) else None)


SEED_LIMIT = 2**63  # torch.manual_seed takes a 64-bit integer


def _check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed must be in [0, 2**63 - 1], got {seed}")


def _check_output_name(output: str | None) -> None:
    """A name the file system refuses (too long, once tinylm adds its suffixes) fails now, not
    after training: e.g. -o with a 250-byte name leaves no room for `.last.model` or a temp file."""
    if not output:
        return
    out = Path(output)
    folder = out.parent if str(out.parent) else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return  # the folder checks of the run report a missing folder
    # the longest name written: a temp file of the .last sibling (pids have at most 7 digits on Linux),
    # counted for the largest pid so that the limit does not depend on the process
    longest = max(len(os.fsencode(f".{out.name}.tmp9999999")) + len(".last.model"),
                  len(os.fsencode(f".{out.stem}.metrics.jsonl.tmp9999999")))  # the metrics file, when trimmed on a resume
    if longest > limit:
        raise UsageError(f"output name {out.name[:40]}... is {len(os.fsencode(out.name))} bytes: with the suffixes tinylm adds "
                         f"(.last.model, .ckpt, temp files) it passes the file system's limit of {limit} bytes per name; "
                         "choose a shorter -o")


def cmd_train(args) -> int:
    from .runner import run_training  # noqa: PLC0415

    _check_seed(args.seed)
    _check_output_name(args.output)
    if args.steps == 0 and args.epochs == 0 and args.time == 0:  # (a preset would quietly add one epoch)
        raise UsageError("--steps, --epochs and --time are all 0 (no limit), so training would never end; "
                         "set at least one of them, e.g. --epochs 1")
    job = job_from_args(args)
    t = job.train
    try:
        run_training(job)
    except StopIteration:  # an epoch ran out of micro-batches inside one optimizer step
        raise UsageError(f"one epoch of the training text holds fewer micro-batches than --grad-accum {t.grad_accum}; "
                         "give more text, or a smaller --grad-accum or --batch-size") from None
    return 0


MAX_BEAMS = 1024  # a beam holds a row of logits and a KV cache: wider searches only spend memory
MAX_NEW_TOKENS = 10_000_000  # the ids of a sample are kept whole on the device


def sampling_from_args(args):
    from .generate.engine import SamplingConfig  # noqa: PLC0415

    if args.beams > MAX_BEAMS:
        raise UsageError(f"--beams must be at most {MAX_BEAMS}, got {args.beams}")
    if args.tokens > MAX_NEW_TOKENS:
        raise UsageError(f"--tokens must be at most {MAX_NEW_TOKENS:,}, got {args.tokens}; generate in several runs")
    for flag, value in (("--temperature", args.temperature), ("--top-p", args.top_p),
                        ("--repetition-penalty", args.repetition_penalty)):
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
    _check_seed(args.seed)
    return SamplingConfig(max_new_tokens=args.tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed)


def _check_utf8_arg(flag: str, text: str | None) -> None:
    """A command-line argument that is not UTF-8 reaches Python as lone surrogates (\udcff for the
    byte 0xff); name the bytes instead of calling them characters the model lacks."""
    if text is None:
        return
    bad = sorted({ch for ch in text if "\udc80" <= ch <= "\udcff"})
    if bad:
        shown = " ".join(f"0x{ord(ch) - 0xDC00:02x}" for ch in bad[:8])
        raise UsageError(f"{flag} is not valid UTF-8 (bytes {shown}); pass UTF-8 text (check the terminal's or "
                         "script's encoding)")


def _generation_setup(args):
    """Checks shared by generate and chat, then (sampling config, loaded model)."""
    import torch  # noqa: PLC0415

    from .generate.sampling import check_request  # noqa: PLC0415
    from .interop.checkpoint import load_any as load_model  # noqa: PLC0415 - a model file or a checkpoint
    from .kernels.cpu_weights import check_kind, convert_linear_weights  # noqa: PLC0415
    from .util.device import check_threads, resolve_device  # noqa: PLC0415

    for flag, text in (("-p/--prompt", getattr(args, "prompt", None)), *(("--stop", t) for t in args.stop)):
        _check_utf8_arg(flag, text)
    cfg = sampling_from_args(args)
    check_request(args.beams, getattr(args, "num_samples", 1), args.stop)  # before the model is loaded
    check_threads(args.threads)
    device = resolve_device(args.device)
    check_kind(args.weights, device)
    loaded = load_model(args.model, device)
    # Decoding a small model is a chain of tiny matrix-vector products: splitting them over threads
    # gains nothing measurable and, on a busy machine, waiting for the slowest thread costs up to
    # 10x (bench/RESULTS.md, Generation).
    if args.threads or (device.type == "cpu" and loaded.model.num_params() < 50_000_000):
        torch.set_num_threads(args.threads or 1)
    convert_linear_weights(loaded.model, args.weights)  # after the parameter count above: int8 weights are not parameters
    return cfg, loaded


def cmd_generate(args) -> int:
    from .generate.text import generate_text, generate_texts, write_out  # noqa: PLC0415

    cfg, loaded = _generation_setup(args)
    opts = dict(stop=args.stop, unknown=args.unknown, decode=args.decode, window=args.window)
    if args.num_samples == 1:
        generate_text(loaded.model, loaded.tokenizer, args.prompt, cfg, beams=args.beams, stream=sys.stdout, echo_prompt=True, **opts)
        write_out(sys.stdout, "\n")
        return 0
    texts = generate_texts(loaded.model, loaded.tokenizer, args.prompt, cfg, args.num_samples, **opts)
    for i, text in enumerate(texts):
        seed = f" (seed {cfg.seed + i})" if cfg.seed is not None else ""
        write_out(sys.stdout, f"--- sample {i + 1}/{len(texts)}{seed} ---\n{args.prompt}{text}\n")
    return 0


def cmd_chat(args) -> int:
    from .generate.chat import chat  # noqa: PLC0415

    cfg, loaded = _generation_setup(args)
    chat(loaded.model, loaded.tokenizer, cfg, stop=args.stop, unknown=args.unknown, decode=args.decode,
         window=args.window, beams=args.beams)
    return 0


def cmd_eval(args) -> int:
    from .interop.checkpoint import load_any as load_model  # noqa: PLC0415 - a model file or a checkpoint
    from .util.device import resolve_device  # noqa: PLC0415
    from .data.tokenfile import scan_text, token_file  # noqa: PLC0415
    from .generate.text import write_out  # noqa: PLC0415
    from .train.trainer import evaluate  # noqa: PLC0415

    if args.copying:  # the copying measure instead of the loss (report/copying.py)
        return copying.cmd_copying(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    # Streamed into the memory-mapped token cache, then evaluated window by window: the text and
    # its ids are never held whole. A character a char model never saw counts as <UNK>.
    info = scan_text(args.dataset)
    ids = token_file(args.dataset, loaded.tokenizer, info, unknown="replace")
    if len(ids) < 2:
        raise UsageError(f"dataset {args.dataset} has fewer than 2 tokens; nothing to evaluate")
    T = loaded.model.cfg.context_size
    batch_size = min(args.batch_size, (len(ids) - 2) // T + 1)  # more windows than the text has would only be padding
    loss = evaluate(loaded.model, ids, T, batch_size, device)
    write_out(sys.stdout, f"tokens: {len(ids) - 1}\nloss: {loss:.4f}\nperplexity: {math.exp(min(loss, 50)):.3f}\n")
    return 0


def cmd_tokenizer(args) -> int:
    from .data.tokenfile import train_bpe_file  # noqa: PLC0415

    from .runner import lock_output  # noqa: PLC0415
    from .util.files import same_file, stale_temps, writable_folder  # noqa: PLC0415

    out = Path(args.output)
    if same_file(out, args.dataset):  # whatever the flags: the output must never replace the training text
        raise UsageError(f"output {out} is the dataset (-d {args.dataset}); no flag lets an output replace an input: "
                         "choose another -o")
    if out.is_dir():
        raise UsageError(f"output {out} is a directory; give a file path such as {out / 'tokenizer.json'}")
    if out.exists() and not args.force:
        raise UsageError(f"output {out} already exists; choose another -o or pass --force to overwrite")
    if not out.parent.is_dir():
        raise UsageError(f"output folder {out.parent} does not exist; create it (mkdir -p {out.parent}) or choose another -o")
    why = writable_folder(out.parent)  # a read-only folder fails now, not after the tokenizer is trained
    if why is not None:
        raise UsageError(f"output folder {out.parent} is not writable ({why}); choose another -o or fix its permissions")
    lock = lock_output(out)
    try:
        for stale in stale_temps(out.parent, {out.name}):  # left by a save that was killed
            stale.unlink(missing_ok=True)
        tok = train_bpe_file(args.dataset, args.vocab_size, pattern=args.pattern)  # streamed: the text is never held whole
        try:
            tok.save(out)
        except OSError as e:  # a full disk: the previous file (if any) is intact, the partial temp file is gone
            raise UsageError(f"could not write {out} ({e.strerror or e}); free some disk space, or choose another -o") from None
    finally:
        lock.release()
    log.info("Saved a BPE tokenizer with %d tokens to %s", tok.vocab_size, out)
    return 0


def cmd_demo(args) -> int:
    """The README's first command: default corpus -> small model -> sample, on whatever device is here."""
    from .model.files import load_model  # noqa: PLC0415
    from .util.device import resolve_device  # noqa: PLC0415
    from .generate.engine import SamplingConfig  # noqa: PLC0415
    from .presets import build_configs  # noqa: PLC0415
    from .runner import TrainJob, run_training  # noqa: PLC0415
    from .generate.text import generate_text  # noqa: PLC0415

    device = resolve_device(args.device)
    name = "cpu" if device.type == "cpu" else "speedrun"
    seconds = args.time if args.time is not None else (180.0 if device.type == "cpu" else 30.0)
    model_kw, train_cfg = build_configs(name, {}, {"time_budget": seconds, "device": device.type}, device.type)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("Demo: preset %r for %g s on %s", name, seconds, device.type)
    res = run_training(TrainJob(dataset=None, output=out, train=train_cfg, model=model_kw, force=True))
    loaded = load_model(out, device)
    log.info("Sample (validation loss %.4f):", res.best_val)
    sys.stderr.flush()
    generate_text(loaded.model, loaded.tokenizer, args.prompt, SamplingConfig(max_new_tokens=400, temperature=0.8, seed=0),
                  stream=sys.stdout, unknown="replace", echo_prompt=True)
    sys.stdout.write("\n")
    return 0


def cmd_serve(args) -> int:
    from .serve.command import cmd_serve as serve  # noqa: PLC0415 - the web server's packages load only here

    return serve(args)


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "generate": cmd_generate, "chat": cmd_chat, "eval": cmd_eval, "tokenizer": cmd_tokenizer,
            "export": interop_commands.cmd_export, "import": interop_commands.cmd_import,
            "plot": plot.cmd_plot, "info": card.cmd_info, "serve": cmd_serve}


def _say(text: str) -> None:
    """Print an error line. Under torchrun every process meets the same bad input: process 0
    prints it at once, the others wait a moment first, and torchrun ends them as soon as process
    0 has failed, so the line appears once; a failure of another process alone is still printed."""
    try:
        rank = int(os.environ.get("RANK", "0"))  # torchrun's rank of this process
    except ValueError:
        rank = 0
    if rank:
        time.sleep(3)
        text = f"[process {rank}] {text}"
    # subtle: a path with a newline in it (or a stray one in a message) must not split the line
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, UnicodeError):
        pass  # stderr is gone or cannot take the text: the exit code still tells


OOM_HINT = "use a smaller --batch-size (with --grad-accum), --beams, --tokens or --num-samples, or a smaller model/--context"


def _is_cpu_oom(e: BaseException) -> bool:
    """A failed host allocation: MemoryError (numpy's too), or PyTorch's allocator RuntimeError."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in ("can't allocate memory", "Cannot allocate memory",
                                                                    "not enough memory", "out of memory"))


def run_guarded(fn, *args) -> int:
    """Run an entry point: UsageError -> one line on stderr, exit 2; running out of memory ->
    one line suggesting a smaller setting, exit 2; a closed or full stdout -> exit 2; Ctrl-C -> 130."""
    try:
        return fn(*args)
    except UsageError as e:
        _say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError):
            print("\ninterrupted", file=sys.stderr)  # after a blank line: a sample may have been mid-line
        return 130
    except BrokenPipeError:  # e.g. `tinylm generate ... | head -c 5`: the reader has gone
        _silence_stdout()
        _say("error: the output pipe was closed before generation ended; nothing is wrong with the model")
        return 2
    except _oom_types() as e:
        _say(f"error: out of GPU memory ({str(e).splitlines()[0][:120]}); {OOM_HINT}")
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _is_cpu_oom(e):
            raise
        why = (str(e).splitlines() or [type(e).__name__])[0]
        why = why[why.find("DefaultCPUAllocator"):] if "DefaultCPUAllocator" in why else why
        _say(f"error: out of memory ({why[:120] or type(e).__name__}); {OOM_HINT}")
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of a closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _oom_types():
    try:
        import torch  # noqa: PLC0415

        return (torch.OutOfMemoryError,)
    except (ImportError, AttributeError):
        return ()


def finish(rc: int) -> int:
    """Flush stdout before exit, so a full or closed stdout is one line too, not a message from
    the interpreter's shutdown."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as e:
        _silence_stdout()
        _say(f"error: cannot write to standard output ({e.strerror or e}); send it to a file with room or a terminal")
        return 2
    return rc


def main(argv: list[str] | None = None) -> int:
    try:
        setup_logging()
        args = build_parser().parse_args(argv)
        return finish(run_guarded(COMMANDS[args.command], args))
    except KeyboardInterrupt:  # Ctrl-C while parsing or importing, before run_guarded took over
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
