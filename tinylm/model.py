"""The GPT-2 architecture (Radford et al. 2019) and the variants tinylm offers.

Owns: `GPTConfig`, the attention / MLP / block modules and `GPT` itself. It knows token ids and
nothing about text (tokenizers), optimisers (train.py) or sampling (generate.py).

Notation used in shape comments:
    B batch, T sequence length (this call), C embedding width (n_embd),
    nh attention heads, hs head size (C // nh), V padded vocabulary size, F MLP hidden width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UsageError
from .kv_cache import KVCache
from .positions import apply_rope, rope_tables, sinusoidal_table

POSITIONS = ("learned", "sinusoidal", "rope")
ACTIVATIONS = ("gelu", "relu", "silu", "swiglu", "relu2")
# Training on CUDA with a head of at least this many outputs takes fused_ce.py's loss (logits never
# kept: GPT-2 124M 26.6 -> 25.4 ms a step on an H200). Below it the logits are small and importing
# triton's op machinery (torch._dynamo with it, ~3 s) would cost a short char-level run more than it saves.
FUSED_CE_MIN_VOCAB = 8192


@dataclass
class GPTConfig:
    vocab_size: int = 65  # the tokenizer's vocabulary; the embedding is padded past it (below)
    context_size: int = 256  # longest sequence the model attends over (GPT-2: 1024)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    d_ff: int = 0  # MLP hidden width; 0 = 4 * n_embd as in GPT-2
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 has them
    positions: str = "learned"  # learned | sinusoidal | rope
    activation: str = "gelu"  # gelu | relu | silu | swiglu | relu2 (ReLU squared, So et al. 2021)
    tie_weights: bool = True  # output head shares the token embedding matrix (Press & Wolf 2017)
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    logit_softcap: float = 0.0  # 0 = off; else logits = cap * tanh(logits / cap) (Gemma 2)
    rope_base: float = 10000.0
    # Padding the embedding to a multiple of 64 lets the output matmul use full tensor-core tiles;
    # the extra ids are never targets, so the model learns to give them ~zero probability.
    vocab_multiple: int = 64

    def __post_init__(self):
        checks = [
            (self.vocab_size >= 1, f"--vocab-size must be at least 1, got {self.vocab_size}"),
            (self.context_size >= 1, f"--context must be at least 1, got {self.context_size}"),
            (self.n_layer >= 1, f"--layers must be at least 1, got {self.n_layer}"),
            (self.n_head >= 1, f"--heads must be at least 1, got {self.n_head}"),
            (self.n_embd >= 1, f"--embd must be at least 1, got {self.n_embd}"),
            (self.d_ff >= 0, f"--ff must be 0 (= 4 x embd) or positive, got {self.d_ff}"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.positions in POSITIONS, f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"),
            (self.activation in ACTIVATIONS, f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"),
            (self.logit_softcap >= 0, f"--softcap must be 0 (off) or positive, got {self.logit_softcap}"),
            (self.vocab_multiple >= 1, "vocab_multiple must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if self.n_embd % self.n_head:
            raise UsageError(f"--heads ({self.n_head}) must divide --embd ({self.n_embd}); "
                             f"try --heads {math.gcd(self.n_embd, self.n_head)} or a width that is a multiple of {self.n_head}")
        if self.positions == "rope" and self.head_size % 2:
            raise UsageError(f"RoPE needs an even head size, got {self.head_size}; change --embd or --heads")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ff_size(self) -> int:
        return self.d_ff or 4 * self.n_embd

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


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
        mask, causal = None, True
        if cache is not None:  # decoding: the cache stores the new keys/values and attends over all it holds
            y = cache.attend(layer, q, k, v)  # (B, nh, T, hs)
            return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))  # (B, T, C)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal and T > 1)  # (B, nh, T, hs)
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
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.n_embd)
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.context_size, cfg.n_embd)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("sin_table", sinusoidal_table(cfg.context_size, cfg.n_embd), persistent=False)
        else:
            cos, sin = rope_tables(cfg.context_size, cfg.head_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)  # (T_max, hs/2)
            self.register_buffer("rope_sin", sin, persistent=False)  # (T_max, hs/2)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        self._compiled_blocks: list | None = None

    def compile_blocks(self) -> None:
        """torch.compile each block for training ("regional" compilation: the blocks share one
        compiled graph, so compile time does not grow with depth). Only gradient-enabled calls
        use it; evaluation and cached decoding stay eager, so they trigger no recompiles."""
        self._compiled_blocks = [torch.compile(b, dynamic=False) for b in self.blocks]

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
        cache: a KVCache; the T tokens are taken to follow the cache's `pos` earlier ones, and the
            cache advances by T. last_only: return logits for the last position only, (B, 1, V).
        logits are (B, T, V) over the *padded* vocabulary; callers slice [..., :vocab_size]. They
            are None when a training loss is computed on CUDA (fused_ce.applies): that path never
            keeps them.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.context_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context size {self.cfg.context_size}")
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.cfg.positions == "learned":
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))  # (B, T, C)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.sin_table[start:start + T]  # (B, T, C)
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])  # (T, hs/2) each
        x = self.drop(x)
        if self._compiled_blocks is not None and cache is None and torch.is_grad_enabled():
            for block in self._compiled_blocks:
                # subtle: no layer index here; an int argument would be a compile-time constant and
                # recompile the block once per layer (past the recompile limit: silently eager)
                x = block(x, rope)
        else:
            for i, block in enumerate(self.blocks):
                x = block(x, rope, cache, i)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)  # (B, T, C)
        if targets is not None and x.is_cuda and self.cfg.padded_vocab >= FUSED_CE_MIN_VOCAB:
            from . import fused_ce  # here, not at the top: CPU runs and small heads need not import triton

            if fused_ce.applies(x, self.cfg.logit_softcap, self.lm_head.bias):
                # training on CUDA: the head's product and the loss in one op that never keeps the
                # logits (fused_ce.py); no caller of a training step reads them
                loss = fused_ce.linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))
                return None, loss
        if last_only and targets is None:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, V)
        if self.cfg.logit_softcap > 0:
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  rolling: bool = False) -> KVCache:
        """An empty KV cache for `batch` rows of `max_len` positions (default: the context size);
        rolling: overwrite the oldest slot when full (RoPE only, see kv_cache.py)."""
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
