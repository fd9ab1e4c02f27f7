"""The model card of a model file: `tinylm info -m model.model [--json]`, `model_card(path)`.

Everything comes from the file itself (its config, tokenizer and the metadata training stored:
train/trainer.py's _save, runner.py's dataset summary) and, when present, the metrics file beside
it (metrics.py) for the run's best and last validation loss. A field the file does not record
(a model saved by an older tinylm) is None, printed as "unknown". The model is loaded with
model/files.py's checks, so a damaged or foreign file is refused the same way everywhere.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .. import __version__
from ..util.errors import UsageError
from .metrics import read_metrics, run_metrics


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _run_losses(path: Path) -> tuple[float | None, float | None]:
    """(best, last) validation loss of the run, from the metrics file beside the model, if any."""
    try:
        rows = read_metrics(run_metrics(path)) if run_metrics(path).is_file() else []
    except UsageError:
        return None, None  # a damaged metrics file does not stop the card: the model file still speaks
    vals = [r["val_loss"] for r in rows if r["kind"] == "eval" and r["val_loss"] is not None]
    return (min(vals), vals[-1]) if vals else (None, None)


def model_card(path: str | os.PathLike) -> dict:
    """A JSON-able description of model file `path` (see the module docstring); raises
    UsageError for anything that is not a usable model file."""
    from ..model.files import load_model  # noqa: PLC0415 - torch is loaded only when a card is asked for

    p = Path(path)
    loaded = load_model(p)
    cfg, tok, meta = loaded.model.cfg, loaded.tokenizer, loaded.meta
    tok_d = tok.to_dict()
    best, last = _run_losses(p)
    here = _finite(meta.get("val_loss"))
    best = best if best is not None else _finite(meta.get("best_val_loss"))
    data = {"file": meta.get("dataset"), "bytes": meta.get("dataset_bytes"), "tokens": meta.get("dataset_tokens"),
            "sha256": meta.get("dataset_sha256")}
    return {
        "path": str(p),
        "architecture": {"family": "GPT (decoder-only transformer)", "layers": cfg.n_layer, "heads": cfg.n_head,
                         "embedding": cfg.n_embd, "context": cfg.context_size, "mlp": cfg.ff_size,
                         "positions": cfg.positions, "activation": cfg.activation, "bias": cfg.bias,
                         "tied_head": cfg.tie_weights, "qk_norm": cfg.qk_norm, "logit_softcap": cfg.logit_softcap,
                         "dropout": cfg.dropout, "config": cfg.to_dict()},
        "parameters": loaded.model.num_params(),
        "tokenizer": {"type": tok.kind, "vocab_size": tok.vocab_size, "pattern": tok_d.get("pattern_name"),
                      "specials": list(tok_d.get("specials") or [])},
        "training_data": data,
        "training": {"steps": meta.get("steps"), "epochs": meta.get("epochs"), "tokens_seen": meta.get("tokens_seen"),
                     "val_loss": here, "best_val_loss": best if best is not None else here,
                     "last_val_loss": last if last is not None else here, "created": meta.get("created"),
                     "saved_at": meta.get("saved_at")},
        "tinylm_version": meta.get("tinylm_version"),  # the version that trained it
        "read_by": __version__,
    }


def _n(x, fmt: str = ",") -> str:
    return "unknown" if x is None else format(x, fmt)


def _loss(x) -> str:
    return "unknown" if x is None else f"{x:.4f} (perplexity {math.exp(min(x, 50)):.2f})"


def card_text(card: dict) -> str:
    """The card as the lines `tinylm info` prints."""
    a, t, d, r = card["architecture"], card["tokenizer"], card["training_data"], card["training"]
    extras = [name for name, on in (("no bias", not a["bias"]), ("untied head", not a["tied_head"]), ("QK-norm", a["qk_norm"]),
                                    (f"logit soft-cap {a['logit_softcap']:g}", a["logit_softcap"])) if on]
    arch = (f"{a['family']}: {a['layers']} layer{'s' * (a['layers'] != 1)}, {a['heads']} head{'s' * (a['heads'] != 1)}, embedding {a['embedding']}, context {a['context']}, "
            f"MLP {a['mlp']}, {a['positions']} positions, {a['activation']}" + "".join(f", {e}" for e in extras))
    pattern = f" ({t['pattern']} pre-split)" if t["pattern"] else ""
    sha = d["sha256"] or "unknown"
    lines = [
        f"model: {card['path']}",
        f"architecture: {arch}",
        f"parameters: {card['parameters']:,}",
        f"tokenizer: {t['type']}{pattern}, vocabulary {t['vocab_size']:,}",
        f"training data: {d['file'] or 'unknown'}, {_n(d['bytes'])} bytes, {_n(d['tokens'])} tokens, sha256 {sha}",
        f"training: {_n(r['steps'])} steps, {_n(r['epochs'], 'g')} epochs, {_n(r['tokens_seen'])} tokens seen",
        f"validation loss of these weights: {_loss(r['val_loss'])}",
        f"validation loss of the run: best {_loss(r['best_val_loss'])}, last {_loss(r['last_val_loss'])}",
        f"saved: {r['saved_at'] or 'unknown'}",
        f"tinylm version: {card['tinylm_version'] or 'unknown'} (read by {card['read_by']})",
    ]
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="print a model file's card",
                       description="Print a model file's card: architecture, parameters, tokenizer, training data, "
                                   "steps, tokens seen, validation loss, tinylm version.")
    p.add_argument("-m", "--model", required=True, help="model file")
    p.add_argument("--json", action="store_true", help="print the card as one JSON object instead of lines")


def cmd_info(args) -> int:
    import sys  # noqa: PLC0415

    from ..generate.text import write_out  # noqa: PLC0415

    card = model_card(args.model)
    write_out(sys.stdout, json.dumps(card, indent=2) + "\n" if args.json else card_text(card))
    return 0
