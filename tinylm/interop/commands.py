"""`tinylm export` and `tinylm import`: their flags and what they run.

export -m MODEL_OR_CHECKPOINT --format hf -o DIR      a transformers directory (hf_export.py)
export -m MODEL_OR_CHECKPOINT --format tinylm -o X.model   a tinylm model file
import --format hf DIR -o X.model                     a GPT-2-family directory as a model (hf_import.py)
Outputs are checked before any input is read (outdir.py); thin wrappers over the library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..util.errors import UsageError
from .outdir import check_out_file, check_out_folder

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model (or checkpoint) for another program",
                       description="Export a tinylm model file or training checkpoint: --format hf writes a transformers "
                                   "directory (config.json, model.safetensors, tokenizer files) that "
                                   "AutoModelForCausalLM / AutoTokenizer load with no custom code; --format tinylm writes "
                                   "a model file (e.g. from a checkpoint).")
    p.add_argument("-m", "--model", required=True, help="model file, or a checkpoint from <output>.ckpt/")
    p.add_argument("--format", choices=["hf", "tinylm"], required=True, help="hf (a transformers directory) or tinylm (a model file)")
    p.add_argument("-o", "--output", required=True, help="directory to write (--format hf) or model file (--format tinylm)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output directory's files, or an existing file")
    p = sub.add_parser("import", help="turn a transformers GPT-2 directory (or one tinylm exported) into a tinylm model",
                       description="Import a local GPT-2-family transformers directory (save_pretrained output, or a "
                                   "downloaded gpt2 / distilgpt2) with its tokenizer files into a tinylm model file.")
    p.add_argument("input", metavar="IN_DIR", help="directory holding config.json, model.safetensors and the tokenizer files")
    p.add_argument("--format", choices=["hf"], required=True, help="hf: a transformers model directory")
    p.add_argument("-o", "--output", required=True, help="model file to write")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")


def cmd_export(args: argparse.Namespace) -> int:
    from ..model.files import save_model  # noqa: PLC0415
    from .checkpoint import load_any  # noqa: PLC0415

    out = Path(args.output)
    if args.format == "hf":
        check_out_folder(out, HF_FILES, args.force, inputs=(args.model,))
    else:
        check_out_file(out, args.force, inputs=(args.model,))
    loaded = load_any(args.model)
    if args.format == "tinylm":
        save_model(out, loaded.model, loaded.tokenizer, loaded.meta)
        sys.stdout.write(f"wrote {out}\n")
        return 0
    from .hf_export import export_hf  # noqa: PLC0415

    names = export_hf(loaded.model.eval(), loaded.tokenizer, out, args.force, inputs=(args.model,))
    sys.stdout.write(f"wrote {out}/ ({', '.join(names)})\n")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..model.files import save_model  # noqa: PLC0415
    from .hf_import import import_hf  # noqa: PLC0415

    out, folder = Path(args.output), Path(args.input)
    inputs = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    check_out_file(out, args.force, inputs=inputs)
    model, tok, meta = import_hf(folder)
    if out.exists() and not args.force:  # appeared while importing
        raise UsageError(f"the output {out} exists; pass --force to overwrite it, or choose another -o")
    save_model(out, model, tok, meta)
    sys.stdout.write(f"wrote {out} ({model.cfg.n_layer} layers, {model.num_params():,} parameters, "
                     f"{tok.vocab_size} tokens)\n")
    return 0
