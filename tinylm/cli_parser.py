"""The `tinylm` command line's argparse parser: every subcommand and flag, with help text.

Flags only; what they mean is the configs' business (model/config.py, train/config.py,
generate/sampling.py), whose tables and tuples the choices and maps below are read from.
cli.py runs the parsed commands.
"""

from __future__ import annotations

import argparse

from .generate.engine import DECODES, WINDOWS
from .interop import commands as interop_commands
from .model.config import ACTIVATIONS, POSITIONS
from .model.config import FLAGS as MODEL_FIELD_FLAGS
from .presets import PRESETS
from .report import card, copying, plot
from .serve import command as serve_command
from .train.config import COMPILE_MODES, OPTIMIZERS, SCHEDULES
from .train.config import FLAGS as TRAIN_FIELD_FLAGS

# argparse dest -> config field, from the tables beside each config
MODEL_FLAGS = {dest: field for field, (dest, _) in MODEL_FIELD_FLAGS.items() if dest}
TRAIN_FLAGS = {dest: field for field, (dest, _) in TRAIN_FIELD_FLAGS.items()}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", help="UTF-8 text file to train on (default: tiny Shakespeare, fetched and cached)")
    p.add_argument("-o", "--output", help="model file to write (default: models/<dataset name>.model); "
                   "the latest weights also go to <name>.last.model")
    p.add_argument("-m", "--model", help="continue training from this model file (its tokenizer and shape are kept)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p.add_argument("--qa", action="store_true", help="the dataset is a Q&A JSON file: a list of {\"question\": ..., "
                   "\"answer\": ...}, trained as <BOS>Question: q\\nAnswer: a<EOS> (then use `tinylm chat`)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size and training defaults (default: tiny)")
    g = p.add_argument_group("model (defaults come from --preset)")
    g.add_argument("--layers", type=int, help="transformer blocks")
    g.add_argument("--heads", type=int, help="attention heads (must divide --embd)")
    g.add_argument("--embd", type=int, help="embedding width")
    g.add_argument("--context", type=int, help="context size in tokens")
    g.add_argument("--ff", type=int, help="MLP hidden width (0 = 4 x embd)")
    g.add_argument("--dropout", type=float, help="dropout rate in [0, 1)")
    g.add_argument("--positions", choices=POSITIONS, help="position encoding (default learned)")
    g.add_argument("--activation", choices=ACTIVATIONS, help="MLP activation (default gelu)")
    g.add_argument("--no-bias", dest="bias", action="store_false", default=None, help="no biases in Linear/LayerNorm")
    g.add_argument("--untied", dest="tie", action="store_false", default=None, help="separate output head (default: tied to embeddings)")
    g.add_argument("--qk-norm", action="store_true", default=None, help="RMS-normalise queries and keys")
    g.add_argument("--softcap", type=float, help="logit soft-cap (0 = off)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", choices=["char", "bpe", "gpt2"], default="char", help="char (default), bpe (trained here) or gpt2")
    g.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    g = p.add_argument_group("training (defaults come from --preset)")
    g.add_argument("--epochs", type=int, help="passes over the training text (0 = no limit)")
    g.add_argument("--steps", type=int, help="optimizer steps (0 = no limit)")
    g.add_argument("--time", type=float, help="training time budget in seconds (0 = no limit)")
    g.add_argument("--batch-size", type=int, help="sequences per micro-batch")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="learning-rate floor")
    g.add_argument("--warmup", type=int, help="linear warmup steps")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (default cosine)")
    g.add_argument("--patience", type=int, help="plateau: epochs without improvement before halving")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw (default) or muon (Muon for the blocks' matrices, AdamW for the rest)")
    g.add_argument("--beta1", type=float, help="AdamW beta1")
    g.add_argument("--beta2", type=float, help="AdamW beta2")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (matrices only)")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (0 = off)")
    g.add_argument("--ema", type=float, help="evaluate and save a moving average of the weights with this decay, "
                   "e.g. 0.995 (0 = off, the default)")
    g.add_argument("--eval-interval", type=int, help="steps between validations (0 = once per epoch)")
    g.add_argument("--val-fraction", type=float, help="fraction of the text (at its end) held out for validation")
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default auto: CUDA if available)")
    g.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="auto = bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", choices=("auto", *COMPILE_MODES), default=None,
                   help="torch.compile for training: model (whole forward+loss), blocks (each block; faster to compile), "
                        "off; auto (default) = model on CUDA for big models (12 x layers x embd^2 >= 50M) or a non-AdamW "
                        "optimizer, else off")
    g.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay the whole training step as one CUDA graph (CUDA, AdamW; the default there while --compile "
                        "is auto: an explicit --compile leaves it to this flag); with "
                        "--compile model the graph records the compiled kernels")
    g.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="launch the step's kernels one by one instead of replaying a CUDA graph")
    g.add_argument("--log-interval", type=int, help="steps between progress lines when not on a terminal, and between "
                   "the rows of <name>.metrics.jsonl")
    g.add_argument("--tensorboard", metavar="DIR", help="also write the metrics as TensorBoard events in DIR "
                   "(needs pip install 'tinylm[tensorboard]'; default: off)")
    g = p.add_argument_group("checkpoints and resuming (checkpoints go to <output>.ckpt/)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0 = off, the default)")
    g.add_argument("--checkpoint-minutes", type=float, help="minutes between checkpoints (0 = off; default 10)")
    g.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept, besides best.ckpt (default 3)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue exactly where the run writing -o stopped (its newest checkpoint), or from the "
                        "checkpoint file or folder CKPT; give the same data and flags as that run")
    g.add_argument("--ignore-mismatch", action="store_true",
                   help="with --resume: resume even if the data or flags differ from the checkpoint's (the new ones apply)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--tokens", type=int, default=500, help="tokens to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="penalise repeated tokens (1 = off)")
    p.add_argument("--beams", type=int, default=1, help="beam search width (1 = sampling)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    p.add_argument("--unknown", choices=["error", "replace"], default="error",
                   help="prompt characters the model never saw: error (default) or replace with <UNK>")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run (default auto)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a sample at this text, which is not printed (repeatable; default: only EOS ends)")
    p.add_argument("--decode", choices=DECODES, default="auto",
                   help="decoding engine: auto (CUDA graph on GPU, eager on CPU), eager, graph, or compile "
                        "(torch.compile, + CUDA graph on GPU: fastest per token, seconds to start)")
    p.add_argument("--window", choices=WINDOWS, default="auto",
                   help="past the context size: slide (re-prefill every quarter context) or roll (RoPE only); "
                        "auto = roll for RoPE models, slide otherwise")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = auto: one for models under 50M parameters, "
                   "whose one-token steps are too small to split, else one per core)")
    p.add_argument("--weights", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="CPU only: precision of the Linear weights while decoding: fp32 (default, exact), fp16 "
                        "(faster, near-lossless) or int8 (fastest at batch 1; per-channel int8 with bf16 activations: "
                        "logits move slightly, so greedy text drifts from fp32's after a while; "
                        "with --decode compile the fastest CPU setting)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinylm", description="Train small GPT-style language models and generate text.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model on a text file", description="Train a GPT model on a UTF-8 text file.")
    _add_train_args(p)
    p = sub.add_parser("generate", help="continue a prompt", description="Generate text from a trained model.")
    p.add_argument("-m", "--model", required=True, help="model file, or a checkpoint from <output>.ckpt/")
    p.add_argument("-p", "--prompt", required=True, help="text to continue")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, generated as one batch; "
                   "sample i uses seed + i (default 1)")
    _add_sampling_args(p)
    p = sub.add_parser("chat", help="ask a Q&A model questions",
                       description="Interactive questions and answers with a model trained on Q&A pairs. One question per "
                                   "line; Ctrl-C stops an answer, `exit` or Ctrl-D quits.")
    p.add_argument("-m", "--model", required=True, help="model file, or a checkpoint from <output>.ckpt/")
    _add_sampling_args(p)
    p = sub.add_parser("eval", help="loss and perplexity on a text file", description="Evaluate a model on a text file.")
    p.add_argument("-m", "--model", required=True, help="model file, or a checkpoint from <output>.ckpt/")
    p.add_argument("-d", "--dataset", required=True, help="UTF-8 text file")
    p.add_argument("--batch-size", type=int, default=16, help="windows per batch (default 16)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run (default auto)")
    copying.add_copying_args(p)
    p = sub.add_parser("demo", help="train on tiny Shakespeare, then print a sample",
                       description="Fetch the default corpus, train a small char model (CPU or GPU) and print a sample.")
    p.add_argument("--time", type=float, default=None, help="training seconds (default: 180 on CPU, 30 on a GPU)")
    p.add_argument("-o", "--output", default="models/demo.model", help="model file (default models/demo.model, overwritten)")
    p.add_argument("-p", "--prompt", default="The ", help="prompt for the sample")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train (default auto)")
    serve_command.add_parser(sub)
    p = sub.add_parser("tokenizer", help="tokenizer tools", description="Tokenizer tools.")
    tsub = p.add_subparsers(dest="tok_command", required=True)
    t = tsub.add_parser("train", help="train a BPE tokenizer", description="Train a byte-level BPE tokenizer and save it as JSON.")
    t.add_argument("-d", "--dataset", required=True, help="UTF-8 text file")
    t.add_argument("-o", "--output", required=True, help="tokenizer JSON file to write")
    t.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size, specials included (default 4096)")
    t.add_argument("--pattern", default="gpt2", help="pre-split regex: gpt2, cl100k, or a custom pattern")
    t.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    interop_commands.add_parser(sub)
    plot.add_parser(sub)
    card.add_parser(sub)
    return parser
