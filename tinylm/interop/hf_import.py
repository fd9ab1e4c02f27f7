"""A GPT-2-family transformers directory (what `save_pretrained` writes, or a downloaded gpt2 /
distilgpt2) as a tinylm model, with the directory's own GPT-2 tokenizer.

GPT2LMHeadModel is tinylm's default block exactly: pre-norm LayerNorms (eps 1e-5), a fused qkv
projection with biases, learned positions, GELU in its tanh form ("gelu_new" and
"gelu_pytorch_tanh" are that function), a head tied to the token embedding unless
tie_word_embeddings is false. Its Conv1D layers store weights as (in, out): transposed here.
The model keeps the exact vocabulary (vocab_multiple 1): padding rows would get logit 0, which
next to GPT-2's large negative logits would take real probability mass.

Every check runs before a tensor is built from the files: the model family and the config
options tinylm can express, the config's sizes against the tensors' shapes, finite weights.
Reads safetensors (never code); a pytorch_model.bin only through torch.load(weights_only=True).
Does not import transformers.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import torch

from ..model.config import GPTConfig
from ..model.gpt import GPT
from ..util.errors import UsageError
from .hf_tokenizer import read_gpt2_tokenizer

SUPPORTED = "GPT-2-family models (model_type gpt2, GPT2LMHeadModel: gpt2, gpt2-medium, distilgpt2, ...)"
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu", "silu": "silu",
               "swish": "silu", "relu2": "relu2"}  # HF ACT2FN name -> tinylm --activation (same function)


def read_config(folder: Path) -> dict:
    """config.json of a GPT-2-family model, with every option tinylm cannot express refused."""
    if not folder.exists():
        raise UsageError(f"the import folder {folder} does not exist; pass the folder holding config.json and model.safetensors")
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass the folder holding config.json and model.safetensors")
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"{folder} has no config.json; pass a transformers model folder (what save_pretrained writes)")
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(conf, dict):
        raise UsageError(f"{path} must hold a JSON object")
    family = conf.get("model_type")
    archs = conf.get("architectures") or []
    if family != "gpt2" or not all(a in ("GPT2LMHeadModel", "GPT2Model") for a in archs if isinstance(a, str)):
        shown = family if isinstance(family, str) else "unknown"
        raise UsageError(f"{folder} holds a {shown[:40]!r} model ({', '.join(map(str, archs))[:60] or 'no architectures'}); "
                         f"tinylm imports {SUPPORTED}")
    act = conf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise UsageError(f"{path}: activation_function {str(act)[:30]!r} has no tinylm equivalent (tinylm's gelu is the tanh "
                         f"form); supported: {', '.join(ACTIVATIONS)}")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if conf.get(key, want) != want:
            raise UsageError(f"{path}: {key} = {json.dumps(conf.get(key))} is an attention variant tinylm does not have "
                             f"(it needs {json.dumps(want)})")
    eps = conf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-12:
        raise UsageError(f"{path}: layer_norm_epsilon {eps} differs from tinylm's LayerNorm epsilon 1e-5")
    return conf


def model_config(conf: dict, vocab_size: int, path: Path) -> GPTConfig:
    sizes = {}
    for hf, ours, default in (("n_positions", "context_size", 1024), ("n_layer", "n_layer", 12), ("n_head", "n_head", 12),
                              ("n_embd", "n_embd", 768)):
        v = conf.get(hf, default)
        if type(v) is not int:
            raise UsageError(f"{path}: {hf} must be an integer, got {json.dumps(v)[:30]}")
        sizes[ours] = v
    inner = conf.get("n_inner")
    if inner is not None and type(inner) is not int:
        raise UsageError(f"{path}: n_inner must be an integer or null, got {json.dumps(inner)[:30]}")
    hf_vocab = conf.get("vocab_size", 50257)
    if hf_vocab != vocab_size:
        raise UsageError(f"{path}: vocab_size {hf_vocab} disagrees with the tokenizer's {vocab_size} tokens; the config "
                         "and tokenizer files are from different models")
    try:
        return GPTConfig(vocab_size=vocab_size, d_ff=inner or 0, bias=True, positions="learned",
                         activation=ACTIVATIONS[conf.get("activation_function", "gelu_new")],
                         tie_weights=bool(conf.get("tie_word_embeddings", True)), vocab_multiple=1, **sizes)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def gpt2_names(cfg: GPTConfig) -> list[tuple[str, str, bool]]:
    """(HF name without "transformer.", tinylm name, stored transposed) for every weight."""
    names = [("wte.weight", "wte.weight", False), ("wpe.weight", "wpe.weight", False),
             ("ln_f.weight", "ln_f.weight", False), ("ln_f.bias", "ln_f.bias", False)]
    for i in range(cfg.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for hf, ours in (("ln_1", "ln1"), ("ln_2", "ln2")):
            names += [(h + hf + ".weight", b + ours + ".weight", False), (h + hf + ".bias", b + ours + ".bias", False)]
        for hf, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc"),
                         ("mlp.c_proj", "mlp.proj")):
            names += [(h + hf + ".weight", b + ours + ".weight", True), (h + hf + ".bias", b + ours + ".bias", False)]
    if not cfg.tie_weights:
        names.append(("lm_head.weight", "lm_head.weight", False))
    return names


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load  # noqa: PLC0415

    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    bad = f"{path} is truncated or not a safetensors file"
    if len(data) < 8:
        raise UsageError(f"{bad} ({len(data)} bytes); download or save it again")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n]) if n <= len(data) - 8 else None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        header = None
    if header is None or 8 + n + end > len(data):
        raise UsageError(f"{bad} (its header or tensor data is cut short); download or save it again")
    try:
        return load(data)
    except Exception as e:  # noqa: BLE001 - safetensors has its own error types for damaged data
        raise UsageError(f"{bad} ({str(e).splitlines()[0][:100]}); download or save it again") from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as e:  # noqa: BLE001 - every way a pickle can be damaged or hostile
        raise UsageError(f"{path} cannot be read as plain tensors ({type(e).__name__}); use its model.safetensors") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{path} does not hold a dict of tensors; use its model.safetensors")
    return sd


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights, names without the "transformer." prefix."""
    if (folder / "model.safetensors").is_file():
        sd = _read_safetensors(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        raise UsageError(f"{folder} holds a sharded checkpoint (model.safetensors.index.json); tinylm imports GPT-2-sized "
                         "models saved as one model.safetensors (save_pretrained(..., max_shard_size='100GB'))")
    elif (folder / "pytorch_model.bin").is_file():
        sd = _read_bin(folder / "pytorch_model.bin")
    else:
        raise UsageError(f"{folder} has no model.safetensors (or pytorch_model.bin); pass a folder save_pretrained wrote")
    return {k.removeprefix("transformer."): v for k, v in sd.items()}


def import_hf(folder: str | Path):
    """(GPT, BPETokenizer, meta) for the GPT-2-family model in `folder`."""
    folder = Path(folder)
    conf = read_config(folder)
    tok = read_gpt2_tokenizer(folder)
    cfg = model_config(conf, tok.vocab_size, folder / "config.json")
    sd = read_weights(folder)
    want = {name: tuple(shape) for name, shape in _tinylm_shapes(cfg).items()}
    state = {}
    for hf, ours, transposed in gpt2_names(cfg):
        if hf not in sd:
            raise UsageError(f"{folder}: the weights lack {hf}, which config.json implies; the config and weights disagree")
        t = sd[hf].t() if transposed and sd[hf].dim() == 2 else sd[hf]
        if tuple(t.shape) != want[ours]:
            shown = list(sd[hf].shape)
            raise UsageError(f"{folder}: config.json disagrees with the weights: {hf} has shape {shown}, but config.json "
                             f"implies {list(want[ours][::-1] if transposed else want[ours])}")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise UsageError(f"{folder}: the weight {hf} is not finite floating-point data; the file is damaged")
        state[ours] = t.float().contiguous()
    model = GPT(cfg)
    model.load_saved_state(state)
    meta = {"imported_from": str(folder), "hf_model_type": "gpt2"}
    return model.eval(), tok, meta


def _tinylm_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(cfg).state_for_saving().items()}
