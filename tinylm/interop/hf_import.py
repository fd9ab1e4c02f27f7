"""A GPT-2-family transformers directory (what `save_pretrained` writes, or a downloaded gpt2 /
distilgpt2) as a tinylm model, with the directory's own byte-level BPE (GPT-2) tokenizer.

GPT2LMHeadModel is tinylm's default block exactly: pre-norm LayerNorms (eps 1e-5), a fused qkv
projection with biases, learned positions, GELU in its tanh form ("gelu_new" and
"gelu_pytorch_tanh" are that function), a head tied to the token embedding unless
tie_word_embeddings is false. Its Conv1D layers store weights as (in, out): transposed here.
GPT-NeoX (sequential residual, full rotary dims) and StableLM (no parallel block, no QK
LayerNorm, one KV head per query head) come in too: they are what hf_export.py writes for RoPE
models, so every export imports back. A model whose biases are all zero (or absent) becomes a
--no-bias one, which computes the same. The model keeps the exact vocabulary (vocab_multiple
1): padding rows would get logit 0, which next to GPT-2's large negative logits would take real
probability mass.

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

SUPPORTED = ("GPT-2-family models (model_type gpt2, GPT2LMHeadModel: gpt2, gpt2-medium, distilgpt2, ...), and the GPT-NeoX "
             "and StableLM layouts `tinylm export` writes")
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu", "silu": "silu",
               "swish": "silu", "relu2": "relu2"}  # HF ACT2FN name -> tinylm --activation (same function)


def read_config(folder: Path) -> dict:
    """config.json of a model of a family tinylm imports (FAMILIES), as a dict."""
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
    if family not in FAMILIES or not all(a in FAMILIES[family][0] for a in archs if isinstance(a, str)):
        shown = family if isinstance(family, str) else "unknown"
        raise UsageError(f"{folder} holds a {shown[:40]!r} model ({', '.join(map(str, archs))[:60] or 'no architectures'}); "
                         f"tinylm imports {SUPPORTED}")
    return conf


def _get(conf: dict, path: Path, key: str, default, kinds=(int,)):
    """conf[key] (or `default`), of one of the JSON types `kinds` (a bool is not an int)."""
    v = conf.get(key, default)
    if type(v) not in kinds:
        raise UsageError(f"{path}: {key} must be {' or '.join(k.__name__ for k in kinds)}, got {json.dumps(v)[:30]}")
    return v


def _need(conf: dict, path: Path, key: str, default, want, why: str) -> None:
    if conf.get(key, default) != want:
        raise UsageError(f"{path}: {key} = {json.dumps(conf.get(key, default))[:30]} is {why} tinylm does not have "
                         f"(it needs {json.dumps(want)})")


def _check_eps(conf: dict, path: Path, key: str) -> None:
    eps = conf.get(key, 1e-5)
    if type(eps) not in (int, float) or abs(eps - 1e-5) > 1e-12:
        raise UsageError(f"{path}: {key} {eps} differs from tinylm's LayerNorm epsilon 1e-5")


def _activation(conf: dict, path: Path, key: str, default: str) -> str:
    act = conf.get(key, default)
    if act not in ACTIVATIONS:
        raise UsageError(f"{path}: {key} {str(act)[:30]!r} has no tinylm equivalent (tinylm's gelu is the tanh "
                         f"form); supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _rope(conf: dict, path: Path, pct_key: str, base_key: str) -> float:
    """The RoPE base of a NeoX / StableLM config, refusing partial rotary dims and scaled RoPE."""
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UsageError(f"{path}: RoPE scaling {json.dumps(rope)[:40]} is not plain RoPE, the only kind tinylm has")
    pct = rope.get("partial_rotary_factor", conf.get(pct_key, 0.25))
    if pct != 1.0:
        raise UsageError(f"{path}: {pct_key} {pct} rotates only part of each head; tinylm's RoPE rotates all of it (1.0)")
    base = rope.get("rope_theta", conf.get("rope_theta", conf.get(base_key, 10000.0)))
    if type(base) not in (int, float):
        raise UsageError(f"{path}: rope_theta must be a number, got {json.dumps(base)[:30]}")
    return float(base)


def model_config(conf: dict, vocab_size: int, path: Path) -> GPTConfig:
    """The GPTConfig (biases on; import_hf drops them if all are zero) of a checked config.json."""
    family = conf["model_type"]
    if family == "gpt2":
        for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
            _need(conf, path, key, want, want, "an attention variant")
        _check_eps(conf, path, "layer_norm_epsilon")
        sizes = {ours: _get(conf, path, hf, d) for hf, ours, d in (("n_positions", "context_size", 1024), ("n_layer", "n_layer", 12),
                                                                 ("n_head", "n_head", 12), ("n_embd", "n_embd", 768))}
        arch = dict(d_ff=_get(conf, path, "n_inner", None, (int, type(None))) or 0, positions="learned",
                    activation=_activation(conf, path, "activation_function", "gelu_new"),
                    tie_weights=_get(conf, path, "tie_word_embeddings", True, (bool,)))
    else:
        _need(conf, path, "use_parallel_residual", family == "gpt_neox", False, "a parallel attention + MLP block, which")
        _check_eps(conf, path, "layer_norm_eps")
        sizes = {ours: _get(conf, path, hf, None) for hf, ours in (("max_position_embeddings", "context_size"),
                 ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"), ("hidden_size", "n_embd"))}
        if family == "stablelm":
            _need(conf, path, "qk_layernorm", False, False, "a per-head LayerNorm of queries and keys, which")
            _need(conf, path, "num_key_value_heads", sizes["n_head"], sizes["n_head"], "grouped-query attention, which")
            _need(conf, path, "hidden_act", "silu", "silu", "a gated MLP activation")
        arch = dict(d_ff=_get(conf, path, "intermediate_size", None), positions="rope",
                    activation="swiglu" if family == "stablelm" else _activation(conf, path, "hidden_act", "gelu"),
                    rope_base=_rope(conf, path, "rotary_pct" if family == "gpt_neox" else "partial_rotary_factor",
                                    "rotary_emb_base"),
                    tie_weights=_get(conf, path, "tie_word_embeddings", False, (bool,)))
    hf_vocab = conf.get("vocab_size")
    if hf_vocab != vocab_size:
        raise UsageError(f"{path}: vocab_size {hf_vocab} disagrees with the tokenizer's {vocab_size} tokens; the config "
                         "and tokenizer files are from different models")
    try:
        return GPTConfig(vocab_size=vocab_size, bias=True, vocab_multiple=1, **sizes, **arch)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


# (HF name, tinylm name, how): how the HF tensor becomes tinylm's. "copy"; "T": GPT-2's Conv1D
# stores (in, out); "qkv-heads": NeoX's fused rows per head [q_h k_h v_h] -> tinylm's [q; k; v];
# "q" / "k" / "v": StableLM's three projections, stacked into tinylm's fused one; "bias?": a bias
# the HF model may lack (NeoX without attention_bias, StableLM's MLP), zeros then.
Names = list[tuple[str, str, str]]


def gpt2_names(cfg: GPTConfig) -> Names:
    names = [("transformer.wte.weight", "wte.weight", "copy"), ("transformer.wpe.weight", "wpe.weight", "copy")]
    for i in range(cfg.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for hf, ours in (("ln_1", "ln1"), ("ln_2", "ln2")):
            names += [(h + hf + ".weight", b + ours + ".weight", "copy"), (h + hf + ".bias", b + ours + ".bias", "copy")]
        for hf, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc"),
                         ("mlp.c_proj", "mlp.proj")):
            names += [(h + hf + ".weight", b + ours + ".weight", "T"), (h + hf + ".bias", b + ours + ".bias", "copy")]
    return names + [("transformer.ln_f.weight", "ln_f.weight", "copy"), ("transformer.ln_f.bias", "ln_f.bias", "copy"),
                    ("lm_head.weight", "lm_head.weight", "copy")]


def neox_names(cfg: GPTConfig) -> Names:
    names = [("gpt_neox.embed_in.weight", "wte.weight", "copy")]
    for i in range(cfg.n_layer):
        h, b = f"gpt_neox.layers.{i}.", f"blocks.{i}."
        for hf, ours in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")):
            names += [(h + hf + ".weight", b + ours + ".weight", "copy"), (h + hf + ".bias", b + ours + ".bias", "copy")]
        names += [(h + "attention.query_key_value.weight", b + "attn.qkv.weight", "qkv-heads"),
                  (h + "attention.query_key_value.bias", b + "attn.qkv.bias", "qkv-heads bias?"),
                  (h + "attention.dense.weight", b + "attn.proj.weight", "copy"),
                  (h + "attention.dense.bias", b + "attn.proj.bias", "bias?")]
        for hf, ours in (("mlp.dense_h_to_4h", "mlp.fc"), ("mlp.dense_4h_to_h", "mlp.proj")):
            names += [(h + hf + ".weight", b + ours + ".weight", "copy"), (h + hf + ".bias", b + ours + ".bias", "copy")]
    return names + [("gpt_neox.final_layer_norm.weight", "ln_f.weight", "copy"),
                    ("gpt_neox.final_layer_norm.bias", "ln_f.bias", "copy"), ("embed_out.weight", "lm_head.weight", "copy")]


def stablelm_names(cfg: GPTConfig) -> Names:
    names = [("model.embed_tokens.weight", "wte.weight", "copy")]
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        for hf, ours in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")):
            names += [(h + hf + ".weight", b + ours + ".weight", "copy"), (h + hf + ".bias", b + ours + ".bias", "copy")]
        for part in "qkv":
            names += [(h + f"self_attn.{part}_proj.weight", b + "attn.qkv.weight", part),
                      (h + f"self_attn.{part}_proj.bias", b + "attn.qkv.bias", part + " bias?")]
        names += [(h + "self_attn.o_proj.weight", b + "attn.proj.weight", "copy"), ("", b + "attn.proj.bias", "bias?")]
        # StableLM: down(silu(gate_proj(x)) * up_proj(x)); tinylm: proj(silu(fc(x)) * gate(x))
        for hf, ours in (("gate_proj", "fc"), ("up_proj", "gate"), ("down_proj", "proj")):
            names += [(h + f"mlp.{hf}.weight", b + f"mlp.{ours}.weight", "copy"), ("", b + f"mlp.{ours}.bias", "bias?")]
    return names + [("model.norm.weight", "ln_f.weight", "copy"), ("model.norm.bias", "ln_f.bias", "copy"),
                    ("lm_head.weight", "lm_head.weight", "copy")]


FAMILIES = {  # model_type -> (architectures, weight names)
    "gpt2": (("GPT2LMHeadModel", "GPT2Model"), gpt2_names),
    "gpt_neox": (("GPTNeoXForCausalLM",), neox_names),
    "stablelm": (("StableLmForCausalLM",), stablelm_names),
}


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
    """The folder's weights by name."""
    if (folder / "model.safetensors").is_file():
        sd = _read_safetensors(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        raise UsageError(f"{folder} holds a sharded checkpoint (model.safetensors.index.json); tinylm imports GPT-2-sized "
                         "models saved as one model.safetensors (save_pretrained(..., max_shard_size='100GB'))")
    elif (folder / "pytorch_model.bin").is_file():
        sd = _read_bin(folder / "pytorch_model.bin")
    else:
        raise UsageError(f"{folder} has no model.safetensors (or pytorch_model.bin); pass a folder save_pretrained wrote")
    # OpenAI's original gpt2 upload has no "transformer." prefix (and its causal masks as extra tensors)
    return {("transformer." + k if k.split(".")[0] in ("h", "wte", "wpe", "ln_f") else k): v for k, v in sd.items()}


def import_hf(folder: str | Path):
    """(GPT, BPETokenizer, meta) for the model in `folder` (a family of FAMILIES)."""
    folder = Path(folder)
    conf = read_config(folder)
    tok = read_gpt2_tokenizer(folder)
    cfg = model_config(conf, tok.vocab_size, folder / "config.json")
    sd = read_weights(folder)
    want = _tinylm_shapes(cfg)  # tinylm name -> shape, biases included
    state, parts = {}, {}  # tinylm name -> tensor; fused qkv name -> {"q": .., "k": .., "v": ..}
    for hf, ours, how in FAMILIES[conf["model_type"]][1](cfg):
        if ours not in want:  # the tied head
            continue
        if hf == "embed_out.weight" and hf not in sd:  # what transformers 5 names NeoX's head
            hf = "lm_head.weight"
        if hf not in sd:
            if how.endswith("bias?"):
                state[ours] = torch.zeros(want[ours])
                continue
            raise UsageError(f"{folder}: the weights lack {hf}, which config.json implies; the config and weights disagree")
        t = _to_tinylm(folder, hf, sd[hf], how.removesuffix(" bias?"), cfg, want[ours])
        if how[0] in "qkv" and how[1:2] in ("", " "):
            parts.setdefault(ours, {})[how[0]] = t
        else:
            state[ours] = t
    for ours, got in parts.items():
        state[ours] = torch.cat([got.get(p, torch.zeros(want[ours][0] // 3, *want[ours][1:])) for p in "qkv"])
    if all(not v.any() for k, v in state.items() if k.endswith(".bias")):  # no biases at all: --no-bias exactly
        cfg = GPTConfig(**{**cfg.to_dict(), "bias": False})
        state = {k: v for k, v in state.items() if not k.endswith(".bias")}
    model = GPT(cfg)
    model.load_saved_state(state)
    meta = {"imported_from": str(folder), "hf_model_type": conf["model_type"]}
    return model.eval(), tok, meta


def _to_tinylm(folder: Path, hf: str, t: torch.Tensor, how: str, cfg: GPTConfig, shape: tuple) -> torch.Tensor:
    """HF tensor `hf` in tinylm's layout, its shape checked against the one config.json implies."""
    C, nh, hs = cfg.n_embd, cfg.n_head, cfg.head_size
    implied = shape[::-1] if how == "T" else (shape[0] // 3, *shape[1:]) if how in ("q", "k", "v") else shape
    if tuple(t.shape) != tuple(implied):
        raise UsageError(f"{folder}: config.json disagrees with the weights: {hf} has shape {list(t.shape)}, but config.json "
                         f"implies {list(implied)}")
    if not t.is_floating_point() or not torch.isfinite(t).all():
        raise UsageError(f"{folder}: the weight {hf} is not finite floating-point data; the file is damaged")
    t = t.float()
    if how == "T":
        t = t.t()
    elif how == "qkv-heads":  # rows per head [q_h; k_h; v_h] -> [q; k; v]
        t = t.view(nh, 3, hs, -1).transpose(0, 1).reshape(3 * C, -1) if t.dim() == 2 else \
            t.view(nh, 3, hs).transpose(0, 1).reshape(3 * C)
    return t.contiguous()


def _tinylm_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GPT(cfg).state_for_saving().items()}
