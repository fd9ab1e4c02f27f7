#!/usr/bin/env python3
"""The classic TinyLM interface (seed 000), a thin wrapper over the tinylm library.

    python main.py -t -d book.txt -o models/book.model      train (Ctrl-C saves and exits)
    python main.py -t -m models/book.model -o models/book.model -d book.txt   continue training:
        exactly where it stopped when models/book.model.ckpt/ has a checkpoint that fits, else
        from the model's weights (the log says which)
    python main.py -i -m models/book.model -p "Prompt"       generate

Training uses seed 000's model and trainer (the `classic` preset): embedding 192, context 512,
4 transformers, 4 heads, ff 768, dropout 0.1, batch 32, AdamW lr 0.001 with betas 0.9/0.95 and
weight decay 0.01, epochs over the chunked text, halving the rate when the loss plateaus.
For every other setting use the full CLI: `python -m tinylm train --help`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class _SeedHelpFormatter(argparse.HelpFormatter):
    """Lists options as `-m, --model MODEL` (metavar once), as the seed's help does."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return ", ".join(action.option_strings) + " " + self._format_args(action, self._get_default_metavar_for_optional(action))


def build_parser() -> argparse.ArgumentParser:
    # wide enough that the usage line stays on one line, as in the seed
    p = argparse.ArgumentParser(prog="main.py", formatter_class=lambda prog: _SeedHelpFormatter(prog, width=100, max_help_position=28))
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("-i", "--inference", action="store_true", help="select inference mode")
    mode.add_argument("-t", "--training", action="store_true", help="select training mode")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("-c", "--cpu", action="store_true", help="set training to use CPU only")
    dev.add_argument("-g", "--gpu", action="store_true", help="set training to use GPU via CUDA")
    p.add_argument("-m", "--model", help="path to the model (works both in inference and training mode)")
    p.add_argument("-d", "--dataset", help="path to the text file (works in training mode only)")
    p.add_argument("-o", "--output", help="path to the output model (works in training mode only)")
    p.add_argument("-p", "--prompt", help="prompt for inference mode")
    return p


def train(args, device: str) -> int:
    from tinylm.util.device import resolve_device  # noqa: PLC0415
    from tinylm.presets import build_configs  # noqa: PLC0415
    from tinylm.runner import TrainJob, run_training  # noqa: PLC0415

    model_kw, train_cfg = build_configs("classic", {}, {"device": device}, resolve_device(device).type)
    job = TrainJob(dataset=args.dataset, output=Path(args.output) if args.output else None, train=train_cfg,
                   model=model_kw, init_model=Path(args.model) if args.model else None, resume_or_continue=True)
    run_training(job)
    return 0


def infer(args, device: str) -> int:
    from tinylm.interop.checkpoint import load_any as load_model  # noqa: PLC0415 - a model file or a checkpoint
    from tinylm.util.device import resolve_device  # noqa: PLC0415
    from tinylm.util.errors import UsageError  # noqa: PLC0415
    from tinylm.generate.engine import SamplingConfig  # noqa: PLC0415
    from tinylm.util.log import banner, log, summary  # noqa: PLC0415
    from tinylm.generate.text import encode_prompt, generate_text, write_out  # noqa: PLC0415

    if not args.model or args.prompt is None:
        raise UsageError("inference mode (-i) needs both -m MODEL and -p PROMPT, e.g. python main.py -i -m models/book.model -p \"Once\"")
    dev = resolve_device(device)
    loaded = load_model(args.model, dev)
    encode_prompt(loaded.tokenizer, args.prompt, loaded.model.cfg.context_size)  # bad prompt: error before any log
    banner("INFERENCE MODE", [("Model", args.model), ("Prompt", args.prompt), ("Device", dev.type)])
    log.info("Loading model...")
    c = loaded.model.cfg
    summary("Model", [("parameters", loaded.model.num_params()), ("embedding size", c.n_embd), ("context size", c.context_size),
                      ("transformers count", c.n_layer), ("ff network size", c.ff_size)])
    log.info("Output:")
    sys.stderr.flush()
    write_out(sys.stdout, "-------------------------------------\n")
    generate_text(loaded.model, loaded.tokenizer, args.prompt, SamplingConfig(max_new_tokens=500, temperature=0.8),
                  stream=sys.stdout, echo_prompt=True)
    write_out(sys.stdout, "\n")
    return 0


def _load_cli():
    from tinylm.cli import finish, run_guarded  # noqa: PLC0415
    from tinylm.util.log import setup_logging  # noqa: PLC0415

    return finish, run_guarded, setup_logging


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from tinylm.launch import import_deferring_sigint  # noqa: PLC0415 - light: imports no torch
        # after parsing, so --help stays fast; a Ctrl-C while torch loads is answered after it (launch.py)
        finish, run_guarded, setup_logging = import_deferring_sigint(_load_cli)
    except KeyboardInterrupt:  # Ctrl-C before the handler was in place
        print("interrupted", file=sys.stderr)
        return 130
    setup_logging()
    device = "cpu" if args.cpu else "cuda" if args.gpu else "auto"
    return finish(run_guarded(train if args.training else infer, args, device))


if __name__ == "__main__":
    sys.exit(main())
