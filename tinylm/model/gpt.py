"""The GPT-2 architecture (Radford et al. 2019) and the variants tinylm offers: the plain
reference path that training, evaluation and decoding all run.

Owns the attention / MLP / block modules and `GPT`. One forward serves every use:
`GPT.trunk` (token embedding, positions, the blocks) and `GPT.head` (final norm, output
projection, soft-cap), joined by `GPT.forward`, which adds the loss. A fast path may run a
different *kernel* for one block or for the head (`block_kernel` / `kernel` arguments, chosen
in kernels/select.py); it never gets a copy of the architecture. Knows token ids and nothing
about text (tokenizers/), optimisers (train/) or sampling (generate/).

Notation used in shape comments:
    B batch, T sequence length (this call), C embedding width (n_embd),
    nh attention heads, hs head size (C // nh), V padded vocabulary size, F MLP hidden width.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..util.errors import UsageError
from .config import ACTIVATIONS, POSITIONS, GPTConfig  # noqa: F401 - re-exported
from .kv_cache import KVCache
from .positions import apply_rope, rope_angles, rope_inv_freq, sinusoidal_table

# (block, x (B, T, C), rope, cache, layer) -> (B, T, C): how one block is run; the plain path calls the block
BlockKernel = Callable[..., torch.Tensor]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: logits (B, T, V), targets (B, T), -1 = not a target.
    In fp32 whatever the autocast: bf16's 8-bit mantissa would round the log-sum-exp."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def run_block(block: nn.Module, x: torch.Tensor, rope, cache, layer: int) -> torch.Tensor:
    """The plain BlockKernel: the block's own forward."""
    return block(x, rope, cache, layer)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask, through PyTorch's fused SDPA kernel (flash
    attention on GPUs that have it)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_size = cfg.n_head, cfg.head_size
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual = True  # scaled at init, see GPT._init_weights
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.qk_norm = cfg.qk_norm

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_size
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:
            q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # decoding: the cache stores the new keys/values and attends over all it holds
            y = cache.attend(layer, q, k, v)  # (B, nh, T, hs)
            return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))  # (B, T, C)
        drop = self.dropout if self.training else 0.0
        # softmax(q k^T / sqrt(hs) + causal mask) v, fused (flash attention where the GPU has it)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=T > 1)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> activation -> Linear. SwiGLU (Shazeer 2020)
    adds a gating projection: (silu(x W1) * (x W3)) W2."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.activation = cfg.activation
        self.fc = nn.Linear(cfg.n_embd, cfg.ff_size, bias=cfg.bias)
        self.gate = nn.Linear(cfg.n_embd, cfg.ff_size, bias=cfg.bias) if cfg.activation == "swiglu" else None
        self.proj = nn.Linear(cfg.ff_size, cfg.n_embd, bias=cfg.bias)
        self.proj.is_residual = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, F)
        if self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's tanh approximation, so exported weights match
        elif self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "silu":
            h = F.silu(h)
        elif self.activation == "relu2":
            h = F.relu(h).square()
        else:  # swiglu
            h = F.silu(h) * self.gate(x)
        return self.drop(self.proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), rope, cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.n_embd)  # token id -> vector
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.context_size, cfg.n_embd)  # position -> vector, added
        elif cfg.positions == "sinusoidal":
            self.register_buffer("sin_table", sinusoidal_table(cfg.context_size, cfg.n_embd), persistent=False)
        else:  # rope: nothing is added; queries and keys are rotated in attention
            inv_freq = rope_inv_freq(cfg.head_size, cfg.rope_base)  # (hs/2,)
            cos, sin = rope_angles(torch.arange(cfg.context_size), inv_freq)
            self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
            self.register_buffer("rope_cos", cos, persistent=False)  # (T_max, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)  # (T_max, hs/2)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 init: N(0, 0.02); projections into the residual stream scaled by 1/sqrt(2 * n_layer)
        # so the stream's variance does not grow with depth (Radford et al. 2019, sec. 2.3).
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "is_residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters, each shared tensor counted once (the tied head adds nothing)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False):
        """idx (B, T) token ids -> (logits, loss).

        targets (B, T): next-token ids; positions with -1 are ignored. loss is None without them.
        cache: a KVCache in prefix mode; the T tokens follow its `pos` earlier ones, and it
            advances by T. last_only: logits of the last position only, (B, 1, V).
        logits are (B, T, V) over the *padded* vocabulary; callers slice [..., :vocab_size].
        """
        x = self.trunk(idx, cache)  # (B, T, C)
        if last_only and targets is None:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.head(x)  # (B, T, V)
        return logits, (lm_loss(logits, targets) if targets is not None else None)

    def trunk(self, idx: torch.Tensor, cache: KVCache | None = None, pos: torch.Tensor | None = None,
              rope: tuple[torch.Tensor, torch.Tensor] | None = None, block_kernel: BlockKernel = run_block) -> torch.Tensor:
        """Embeddings, positions and every block: idx (B, T) -> the residual stream (B, T, C),
        before the final norm.

        pos (T,): the tokens' positions as a device tensor (static-mode decoding, which sets them
            on the cache too); default: right after the cache's `pos` earlier tokens, or 0..T-1.
        rope: (cos, sin), each (T, hs/2), instead of the model's tables (a rolling window's
            positions go past them; see generate/engine.py).
        block_kernel: how each block is run (a fast path's kernel; see kernels/select.py)."""
        B, T = idx.shape
        prefix = pos is None
        if prefix:
            start = cache.pos if cache is not None else 0
            if start + T > self.cfg.context_size:
                raise ValueError(f"sequence of {start + T} tokens exceeds the context size {self.cfg.context_size}")
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        if self.cfg.positions == "learned":
            x = x + self.wpe(pos)  # (B, T, C)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.sin_table[pos]  # (B, T, C)
        elif rope is None:
            rope = (self.rope_cos[pos], self.rope_sin[pos])  # (T, hs/2) each
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block_kernel(block, x, rope, cache, i)  # (B, T, C)
        if prefix and cache is not None:
            cache.advance(T)
        return x

    def head(self, x: torch.Tensor, kernel: Callable | None = None) -> torch.Tensor:
        """Final LayerNorm, output projection and soft-cap: x (..., C) -> logits (..., V).
        kernel(ln_f, lm_head, x) may compute lm_head(ln_f(x)) in one fused op (decoding)."""
        logits = kernel(self.ln_f, self.lm_head, x) if kernel is not None else self.lm_head(self.ln_f(x))  # (..., V)
        if self.cfg.logit_softcap > 0:  # Gemma 2: squash logits smoothly into (-cap, cap)
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  rolling: bool = False) -> KVCache:
        """An empty KV cache for `batch` rows of `max_len` positions (default: the context size);
        rolling: overwrite the oldest slot when full (RoPE only, see model/kv_cache.py)."""
        p = self.wte.weight
        return KVCache(self.cfg.n_layer, batch, self.cfg.n_head, max_len or self.cfg.context_size,
                       self.cfg.head_size, device=p.device, dtype=dtype or p.dtype, rolling=rolling)

    def state_for_saving(self) -> dict[str, torch.Tensor]:
        """state_dict without the tied head (safetensors stores no aliased tensors)."""
        sd = self.state_dict()
        if self.cfg.tie_weights:
            sd.pop("lm_head.weight", None)
        return {k: v.detach().contiguous() for k, v in sd.items()}

    def load_saved_state(self, sd: dict[str, torch.Tensor]) -> None:
        try:
            missing, unexpected = self.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatch between the stored config and the tensors
            raise UsageError(f"the model file's weights do not fit its config ({str(e).splitlines()[-1].strip()[:120]}); "
                             "the file is damaged or from another program") from None
        allowed = {"lm_head.weight"} if self.cfg.tie_weights else set()
        if set(missing) - allowed or unexpected:
            raise UsageError(f"the model file's weights do not match its config (missing {sorted(set(missing) - allowed)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}); the file is damaged or from another program")
