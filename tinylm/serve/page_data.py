"""What the playground page shows beside the model: its card and its training curve.

The card comes from `tinylm.report.card.model_card(path)` where that module exists, else from
the model file's own config and metadata (a smaller card). The curve comes from
`NAME.metrics.jsonl` beside `NAME.model`: one JSON object a line, `kind` "train" (train_loss, lr,
...) or "eval" (val_loss, val_ppl), each with `step` and `tokens`. The file is read with bounds
(size, rows, points sent) and lines that are not such objects are skipped; it is data, never code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MAX_METRICS_BYTES = 64 << 20
MAX_POINTS = 2000  # per series sent to the page: longer runs are thinned evenly


def metrics_path(model_path: str | Path) -> Path:
    """x/NAME.model -> x/NAME.metrics.jsonl (any other name: NAME.metrics.jsonl beside it too)."""
    p = Path(model_path)
    stem = p.name[: -len(".model")] if p.name.endswith(".model") else p.name
    return p.with_name(stem + ".metrics.jsonl")


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _thin(points: list) -> list:
    if len(points) <= MAX_POINTS:
        return points
    stride = len(points) / MAX_POINTS
    return [points[int(i * stride)] for i in range(MAX_POINTS - 1)] + [points[-1]]


def read_metrics(path: str | Path) -> dict:
    """{"train": [[step, train_loss], ...], "eval": [[step, val_loss], ...]}; empty lists when
    the file is missing, too large or unreadable."""
    p = Path(path)
    train, evals = [], []
    try:
        if not p.is_file() or p.stat().st_size > MAX_METRICS_BYTES:
            return {"train": [], "eval": []}
        with p.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict):
                    continue
                step = _number(row.get("step"))
                if step is None:
                    continue
                if row.get("kind") == "train" and _number(row.get("train_loss")) is not None:
                    train.append([step, _number(row["train_loss"])])
                elif row.get("kind") == "eval" and _number(row.get("val_loss")) is not None:
                    evals.append([step, _number(row["val_loss"])])
    except (OSError, RecursionError):
        pass
    return {"train": _thin(train), "eval": _thin(evals)}


def fallback_card(path: str | Path, loaded) -> dict:
    """A card from the model file itself: architecture, size, tokenizer, data, val loss."""
    cfg, meta = loaded.model.cfg, loaded.meta or {}
    tok = loaded.tokenizer
    return {"name": Path(path).name,
            "architecture": {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "context_size", "positions",
                                                          "activation") if hasattr(cfg, k)},
            "parameters": loaded.model.num_params(),
            "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size},
            "data": meta.get("dataset"),
            "steps": meta.get("steps"), "tokens_seen": meta.get("tokens_seen"),
            "val_loss": _number(meta.get("val_loss"))}


def page_card(path: str | Path, loaded) -> dict:
    """{"card": ..., "metrics": ...} for GET /card."""
    try:
        from ..report.card import model_card  # noqa: PLC0415 - another piece of tinylm; may not be there
    except ImportError:
        card = fallback_card(path, loaded)
    else:
        try:
            card = model_card(path)
        except Exception:  # noqa: BLE001 - a card that fails must not stop the server
            card = fallback_card(path, loaded)
    # through JSON once: the page gets plain data whatever the card holds
    card = json.loads(json.dumps(card, default=str))
    return {"card": card, "metrics": read_metrics(metrics_path(path))}
