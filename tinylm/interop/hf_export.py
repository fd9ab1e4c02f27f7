"""A tinylm model as a transformers model directory: config.json, model.safetensors, tokenizer files.

Which HF architecture (checked against transformers' modeling code; every mapping is exact, and
tests/test_hf_interop.py holds the logits equal):
    GPT2LMHeadModel    learned or sinusoidal positions (the sinusoidal table becomes the learned
                       one, which it equals), GELU (tanh form) / ReLU / SiLU / ReLU^2 MLP.
    GPTNeoXForCausalLM RoPE with any of those activations: sequential residual
                       (use_parallel_residual false), full rotary dims, the same rotate-half pairs
                       (i, i + hs/2) as model/positions.py; the fused qkv is per head [q k v].
    StableLmForCausalLM RoPE with SwiGLU and --no-bias: its MLP is down(silu(gate(x)) * up(x))
                       with no biases, its norms LayerNorms, which is tinylm's block exactly.
--no-bias becomes zero biases where the HF model always has them (LayerNorm, GPT-2's Conv1D):
x W + 0 is x W. The tied head is written once and tied by `tie_word_embeddings`. Refused, with
the option named: --qk-norm (no HF architecture normalises q and k with a weightless per-head
RMSNorm inside LayerNorm blocks), --softcap (Gemma 2's soft-cap comes with RMSNorm blocks),
SwiGLU without RoPE, or with biases.

The padded vocabulary rows (model/config.py vocab_multiple) are cut: the HF model's vocab_size is
the tokenizer's, and its logits are tinylm's logits[..., :vocab_size]. Needs neither transformers
nor tokenizers: the files are JSON and safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model.config import GPTConfig
from ..model.gpt import GPT
from ..tokenizers import Tokenizer
from ..util.errors import UsageError
from .hf_tokenizer import tokenizer_files
from .outdir import write_folder

HF_ACTIVATIONS = {"gelu": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu", "relu2": "relu2"}  # tinylm -> ACT2FN name


def architecture(cfg: GPTConfig) -> str:
    """The HF architecture that expresses `cfg` exactly, or a UsageError naming the option."""
    if cfg.qk_norm:
        raise UsageError("cannot export to HF: --qk-norm (a weightless per-head RMSNorm of queries and keys inside "
                         "LayerNorm blocks) matches no transformers architecture; train without --qk-norm to export")
    if cfg.logit_softcap:
        raise UsageError(f"cannot export to HF: --softcap {cfg.logit_softcap:g} (logit soft-capping) exists in transformers "
                         "only in Gemma 2, whose RMSNorm blocks differ from tinylm's; train with --softcap 0 to export")
    if cfg.activation == "swiglu":
        if cfg.positions != "rope" or cfg.bias:
            has = f"--positions {cfg.positions}" + (" with biases" if cfg.bias else " and --no-bias")
            raise UsageError(f"cannot export to HF: --activation swiglu maps only to StableLM, which needs --positions rope "
                             f"and --no-bias; this model has {has}")
        return "StableLmForCausalLM"
    return "GPTNeoXForCausalLM" if cfg.positions == "rope" else "GPT2LMHeadModel"


def hf_config(cfg: GPTConfig, tok: Tokenizer) -> dict:
    """config.json for `cfg` (see `architecture`)."""
    arch = architecture(cfg)
    eos = tok.eos_id
    bos = tok.bos_id if tok.bos_id is not None else eos
    common = {"architectures": [arch], "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_weights,
              "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": tok.pad_id, "torch_dtype": "float32",
              "initializer_range": 0.02, "use_cache": True}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base, "partial_rotary_factor": 1.0}
    if arch == "GPT2LMHeadModel":
        return {**common, "model_type": "gpt2", "n_positions": cfg.context_size, "n_embd": cfg.n_embd,
                "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.ff_size,
                "activation_function": HF_ACTIVATIONS[cfg.activation], "layer_norm_epsilon": 1e-5,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    layers = {"hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "intermediate_size": cfg.ff_size, "max_position_embeddings": cfg.context_size, "layer_norm_eps": 1e-5,
              "attention_dropout": 0.0, "hidden_dropout": 0.0, "use_parallel_residual": False,
              "rope_parameters": rope, "rope_theta": cfg.rope_base, "partial_rotary_factor": 1.0}
    if arch == "GPTNeoXForCausalLM":  # rotary_pct / rotary_emb_base: the names older transformers read
        return {**common, **layers, "model_type": "gpt_neox", "hidden_act": HF_ACTIVATIONS[cfg.activation],
                "attention_bias": cfg.bias, "rotary_pct": 1.0, "rotary_emb_base": cfg.rope_base}
    return {**common, **layers, "model_type": "stablelm", "hidden_act": "silu", "num_key_value_heads": cfg.n_head,
            "use_qkv_bias": False, "qk_layernorm": False}


def hf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under the HF architecture's names and layouts (fp32, contiguous)."""
    cfg = model.cfg
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if cfg.positions == "sinusoidal":
        sd["wpe.weight"] = model.sin_table.float().cpu()  # a fixed table is a learned one that never moved

    def get(name: str, like: str | None = None) -> torch.Tensor:
        """sd[name]; a bias tinylm does not have (--no-bias) is zeros of the size of `like`'s rows."""
        if name in sd:
            return sd[name]
        if like is None:  # a LayerNorm's bias: as wide as its weight
            like = name.rsplit(".", 1)[0] + ".weight"
            return torch.zeros_like(sd[like])
        return torch.zeros(sd[like].shape[0])

    V = cfg.vocab_size
    arch = architecture(cfg)
    out = {}
    if arch == "GPT2LMHeadModel":
        out["transformer.wte.weight"] = sd["wte.weight"][:V]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            b, h = f"blocks.{i}.", f"transformer.h.{i}."
            for hf, ours in (("ln_1", "ln1"), ("ln_2", "ln2")):
                out[h + hf + ".weight"], out[h + hf + ".bias"] = sd[b + ours + ".weight"], get(b + ours + ".bias")
            for hf, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc"),
                             ("mlp.c_proj", "mlp.proj")):
                out[h + hf + ".weight"] = sd[b + ours + ".weight"].t()  # Conv1D stores (in, out)
                out[h + hf + ".bias"] = get(b + ours + ".bias", b + ours + ".weight")
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_f.weight"], get("ln_f.bias")
    elif arch == "GPTNeoXForCausalLM":
        out.update(_neox(cfg, sd, get))
    else:
        out.update(_stablelm(cfg, sd, get))
    if not cfg.tie_weights:  # GPT-NeoX's head is "embed_out" (transformers 5 renames it to lm_head on loading)
        out["embed_out.weight" if arch == "GPTNeoXForCausalLM" else "lm_head.weight"] = sd["lm_head.weight"][:V]
    return {k: v.contiguous().clone() for k, v in out.items()}


def _neox(cfg: GPTConfig, sd: dict, get) -> dict[str, torch.Tensor]:
    C, nh, hs = cfg.n_embd, cfg.n_head, cfg.head_size
    out = {"gpt_neox.embed_in.weight": sd["wte.weight"][:cfg.vocab_size]}
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        for hf, ours in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")):
            out[h + hf + ".weight"], out[h + hf + ".bias"] = sd[b + ours + ".weight"], get(b + ours + ".bias")
        # tinylm's rows are [q; k; v], each (nh, hs); NeoX's are per head [q_h; k_h; v_h]
        w = sd[b + "attn.qkv.weight"].view(3, nh, hs, C).transpose(0, 1).reshape(3 * C, C)  # (3C, C)
        out[h + "attention.query_key_value.weight"] = w
        out[h + "attention.dense.weight"] = sd[b + "attn.proj.weight"]
        if cfg.bias:  # attention_bias follows --no-bias; NeoX's MLP always has biases
            out[h + "attention.query_key_value.bias"] = sd[b + "attn.qkv.bias"].view(3, nh, hs).transpose(0, 1).reshape(3 * C)
            out[h + "attention.dense.bias"] = sd[b + "attn.proj.bias"]
        for hf, ours in (("mlp.dense_h_to_4h", "mlp.fc"), ("mlp.dense_4h_to_h", "mlp.proj")):
            out[h + hf + ".weight"] = sd[b + ours + ".weight"]
            out[h + hf + ".bias"] = get(b + ours + ".bias", b + ours + ".weight")
    out["gpt_neox.final_layer_norm.weight"], out["gpt_neox.final_layer_norm.bias"] = sd["ln_f.weight"], get("ln_f.bias")
    return out


def _stablelm(cfg: GPTConfig, sd: dict, get) -> dict[str, torch.Tensor]:
    C = cfg.n_embd
    out = {"model.embed_tokens.weight": sd["wte.weight"][:cfg.vocab_size]}
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        for hf, ours in (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2")):
            out[h + hf + ".weight"], out[h + hf + ".bias"] = sd[b + ours + ".weight"], get(b + ours + ".bias")
        q, k, v = sd[b + "attn.qkv.weight"].split(C, dim=0)  # 3 x (C, C)
        out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"], out[h + "self_attn.v_proj.weight"] = q, k, v
        out[h + "self_attn.o_proj.weight"] = sd[b + "attn.proj.weight"]
        # tinylm: proj(silu(fc(x)) * gate(x)); StableLM: down(silu(gate_proj(x)) * up_proj(x))
        out[h + "mlp.gate_proj.weight"] = sd[b + "mlp.fc.weight"]
        out[h + "mlp.up_proj.weight"] = sd[b + "mlp.gate.weight"]
        out[h + "mlp.down_proj.weight"] = sd[b + "mlp.proj.weight"]
    out["model.norm.weight"], out["model.norm.bias"] = sd["ln_f.weight"], get("ln_f.bias")
    return out


def hf_files(model: GPT, tok: Tokenizer) -> dict[str, bytes]:
    """file name -> bytes of the whole HF directory for `model` and its tokenizer."""
    from safetensors.torch import save  # noqa: PLC0415

    cfg = model.cfg
    files = {"config.json": (json.dumps(hf_config(cfg, tok), indent=2) + "\n").encode()}
    files.update({k: v.encode("utf-8") for k, v in tokenizer_files(tok, cfg.context_size).items()})
    files["model.safetensors"] = save(hf_tensors(model), metadata={"format": "pt"})
    return files


def export_hf(model: GPT, tok: Tokenizer, out_dir: str | Path, force: bool = False, inputs: tuple = ()) -> list[str]:
    """Write the HF directory (everything built in memory first, so a refusal writes nothing).
    Returns the names written."""
    files = hf_files(model, tok)
    write_folder(Path(out_dir), files, force, inputs)
    return sorted(files)
