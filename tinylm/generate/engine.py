"""Text generation over token ids: the decoding engine (sampling with the pure functions of
sampling.py; beam search, which drives the same Decoder, is in beam.py).

The engine knows nothing about tokenization, only token ids: the caller encodes the prompt and
decodes what comes back (streaming gets each step's ids through a callback). Text-level features,
stop strings and UTF-8-safe streaming, live in generate/text.py.

Window policy. A model attends over at most `context_size` tokens. When the sequence outgrows it:
- slide (learned or sinusoidal positions): the window jumps forward by `slide` tokens at once (a
  quarter of the context by default) and the kept tokens are re-prefilled in one pass. Sliding
  by one token every step (seed 004) would force a full recompute per token, because every cached
  key would change position; sliding in strides keeps the cache valid between jumps, at the cost
  of one prefill per `slide` tokens. The uncached path follows the same policy, so both give the
  same tokens.
- roll (RoPE only): the cache is a ring of the last `context_size` tokens and each new token
  overwrites the oldest. RoPE scores depend only on query-key distance, so cached keys stay valid
  as the window moves and nothing is recomputed; no distance exceeds what training saw. This is
  sliding-window attention (Beltagy et al. 2020): a cached key was computed when its token saw
  its own window, not the current one, and quality may dip once the first tokens have left the
  cache (the "attention sink" effect, Xiao et al. 2023).
"auto" picks roll for RoPE models and slide for the others.

Randomness. Row b draws its noise from a counter-based hash of (seed + b, step, token id) and
takes argmax(logits / temperature + Gumbel noise), the Gumbel-max trick, which samples exactly
from the softmax. No generator state is involved, so row b of a batch gets what `seed + b` gives
alone, and the whole step, sampling included, can run inside a CUDA graph.

Speed. Decoding drives the cache in static mode (model/kv_cache.py): fixed shapes, the position
in a device tensor. Every step runs the model's own forward (GPT.trunk, GPT.head); on CUDA one
step (forward, sampling, bookkeeping) is recorded once as a CUDA graph and replayed for every
token, optionally after torch.compile has fused its kernels, and one-token steps take the fast
kernels that kernels/select.py chooses (fused attention, fused block and head; `fast=()` turns
them off). The host reads tokens back only when a callback wants them (streaming, stop strings),
or every `sync_every` steps to learn whether every row has finished.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..kernels import cpu_weights
from ..kernels.select import DECODE_FAST, decode_kernels
from ..model.gpt import run_block
from ..model.positions import rope_angles
from ..util.errors import UsageError
from ..util.log import log
from .sampling import (  # noqa: F401 - re-exported: the sampling API lives beside the engine
    SamplingConfig, repetition_filter, row_keys, sample_next, top_k_filter, top_p_filter, uniform_noise)

WINDOWS = ("auto", "slide", "roll")
DECODES = ("auto", "eager", "graph", "compile")


def model_device(model) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def resolve_window(window: str, positions: str) -> str:
    if window not in WINDOWS:
        raise UsageError(f"--window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if window == "roll" and positions != "rope":
        raise UsageError(f"--window roll needs a RoPE model (this one has {positions} positions); use --window slide")
    if window == "auto":
        return "roll" if positions == "rope" else "slide"
    return window


class Decoder:
    """Feeds a growing sequence to the model and returns next-token logits (B, vocab), keeping a
    static KV cache in step with the window policy of the module docstring.

    `prefill`/`step` take the whole sequence so far (B, n) and are all a host loop needs;
    `forward_one` is the fixed-shape part that a CUDA graph records. Eagerly (track_host), the
    host also counts the filled slots so that attention reads only those; a recorded step must
    read them all (set track_host False before recording)."""

    def __init__(self, model, batch: int, vocab_size: int, use_cache: bool = True, window: str = "auto", slide: int = 0,
                 fast: tuple[str, ...] = DECODE_FAST, compiled: bool = False):
        cfg = model.cfg
        self.model, self.vocab_size, self.use_cache = model, vocab_size, use_cache
        self.ctx = cfg.context_size
        self.slide = min(slide or max(1, self.ctx // 4), self.ctx)
        # Without the cache only `model(idx, last_only=True)` and `cfg.context_size` are used (the
        # reference path; tests drive it with stand-in models).
        self.rolling = use_cache and resolve_window(window, cfg.positions) == "roll"
        device = model_device(model)
        self.cache = None
        if use_cache:
            self.cache = model.new_cache(batch, rolling=self.rolling)
            self.kernels = decode_kernels(model, self.cache, batch, fast, compiled)  # for one-token steps
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # position of the next token fed
        self.track_host, self.host_pos = True, 0  # host copy of `pos`, eager only
        self.start = 0  # index in the full sequence where the window begins

    def logits_at(self, idx: torch.Tensor, pos: torch.Tensor, one_token: bool = False) -> torch.Tensor:
        """The model's own forward for idx (B, T) at positions pos (T,), keys and values through
        the cache in static mode -> logits of the last position (B, V_padded). One-token steps
        run the kernels chosen for them (kernels/select.py); the prefill runs the plain path."""
        model = self.model
        self.cache.set_positions(pos)
        # a rolling window's positions go past the model's RoPE tables: angles from the positions
        rope = rope_angles(pos, model.rope_inv_freq) if self.rolling else None
        block, head = (self.kernels.block, self.kernels.head) if one_token else (run_block, None)
        x = model.trunk(idx, self.cache, pos=pos, rope=rope, block_kernel=block)  # (B, T, C)
        return model.head(x[:, -1], kernel=head)  # (B, V_padded)

    def prefill(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n): the prompt. One longer than the context keeps its last `context_size`
        tokens (seed 004's sliding window)."""
        self.start = max(0, seq.size(1) - self.ctx)
        return self._run_window(seq)

    def needs_refill(self, n: int) -> bool:
        """Whether the step that feeds token n-1 of the sequence must re-run the window."""
        return not self.use_cache or (not self.rolling and n - self.start > self.ctx)

    def refill(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.size(1) - self.start > self.ctx:  # window full: jump forward by `slide`
            self.start = seq.size(1) - (self.ctx - self.slide)
        return self._run_window(seq)

    def step(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, n): the sequence including the token just appended."""
        if self.needs_refill(seq.size(1)):
            return self.refill(seq)
        return self.forward_one(seq[:, -1:])

    def forward_one(self, tok: torch.Tensor) -> torch.Tensor:
        """tok (B, 1) at position `self.pos` -> logits (B, vocab). Fixed shapes, no host sync."""
        self.cache.filled = None  # recorded: every slot (and no Python int for torch.compile to specialise on)
        if self.track_host:
            self.host_pos += 1
            self.cache.filled = min(self.host_pos, self.ctx)
        logits = self.logits_at(tok, self.pos, one_token=True)
        self.pos += 1
        return logits[:, : self.vocab_size]

    def _run_window(self, seq: torch.Tensor) -> torch.Tensor:
        window = seq[:, self.start:]  # (B, T <= ctx)
        if not self.use_cache:
            logits, _ = self.model(window, last_only=True)  # (B, 1, V)
            return logits[:, -1, : self.vocab_size]
        T = window.size(1)
        pos = torch.arange(T, device=window.device)  # (T,)
        self.cache.filled = T
        logits = self.logits_at(window, pos, one_token=T == 1)
        self.pos.fill_(T)
        self.host_pos = T
        return logits[:, : self.vocab_size]

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)


# ---------------------------------------------------------------- sampling state and the engine

class Sampler:
    """Chooses each step's tokens and keeps the per-row state that choosing updates, all in
    preallocated device tensors so that a recorded step can update them in place."""

    def __init__(self, cfg: SamplingConfig, batch: int, vocab_size: int, eos_id: int | None, device):
        self.cfg, self.eos_id = cfg, eos_id
        self.fill = eos_id if eos_id is not None else 0  # what a finished row is fed from then on
        self.keys = row_keys(self._seed(), batch, device)  # (B,)
        self.step = torch.zeros((), dtype=torch.long, device=device)  # index of the token being chosen
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)  # last choice, fed next
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,) finished rows
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # tokens chosen before finishing, EOS included
        self.seen = None  # (B, V) tokens in the sequence, for the repetition penalty
        if cfg.repetition_penalty != 1.0:
            self.seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)

    def _seed(self) -> int:
        return self.cfg.seed if self.cfg.seed is not None else int(torch.randint(0, 2**62, ()))

    def start(self, prompt: torch.Tensor) -> None:
        """Reset for a new generation (in place: a recorded step keeps reading these tensors)."""
        self.step.zero_(), self.done.zero_(), self.length.zero_()
        if self.cfg.seed is None:  # no seed: fresh randomness for every generation
            self.keys.copy_(row_keys(self._seed(), self.keys.numel()))
        if self.seen is not None:
            self.seen.zero_()
            self.seen.scatter_(1, prompt, True)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) -> this step's ids (B,); finished rows get `fill`."""
        if self.seen is not None:
            logits = repetition_filter(logits, self.seen, self.cfg.repetition_penalty)
        nxt = sample_next(logits, self.cfg, self.keys, self.step)
        nxt = torch.where(self.done, self.fill, nxt)  # (B,)
        self.length += ~self.done
        if self.eos_id is not None:
            self.done |= nxt == self.eos_id
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)
        self.tok.copy_(nxt[:, None])
        self.step += 1
        return nxt

    def finish(self, rows: Sequence[bool]) -> None:
        """Mark rows finished from the host (a stop string was found)."""
        self.done |= torch.as_tensor(list(rows), dtype=torch.bool, device=self.done.device)


def _record_cuda_graph(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Record fn, which must read and write only preallocated tensors, as a CUDA graph; return a
    function that replays it and gives fn's output tensor (overwritten by each replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph: lazy init, cuBLAS workspaces, compilation
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


class Engine:
    """Generates continuations for batches of B prompts with fixed sampling settings. Building it
    records the CUDA graph (when used); calling it runs one generation. Reuse one engine for many
    prompts (chat does) so the graph is recorded once.

    decode: auto (graph on CUDA, eager elsewhere) | eager | graph (CUDA graph of the eager step) |
    compile (torch.compile the step, then on CUDA record it as a CUDA graph; slower to start; each
    compiled engine adds an entry to dynamo's cache for `_one_step`, which holds
    torch._dynamo.config.recompile_limit of them, 8 by default, before running eagerly).
    compile_mode: torch.compile's mode, e.g. "max-autotune-no-cudagraphs" (the graph is ours)."""

    @torch.no_grad()  # not inference_mode: callers may edit the ids we return in place
    def __init__(self, model, batch: int, vocab_size: int, cfg: SamplingConfig, eos_id: int | None = None,
                 use_cache: bool = True, window: str = "auto", decode: str = "auto", sync_every: int = 16,
                 compile_mode: str | None = None, fast: tuple[str, ...] = DECODE_FAST):
        if decode not in DECODES:
            raise UsageError(f"--decode must be one of {', '.join(DECODES)}, got {decode!r}")
        model.eval()
        device = model_device(model)
        self.cfg, self.eos_id, self.sync_every = cfg, eos_id, sync_every
        self.decoder = Decoder(model, batch, vocab_size, use_cache, window, fast=fast, compiled=decode == "compile")
        self.sampler = Sampler(cfg, batch, vocab_size, eos_id, device)
        self.mode = self._build_step(decode, device, compile_mode)

    def _one_step(self) -> torch.Tensor:
        return self.sampler.choose(self.decoder.forward_one(self.sampler.tok))

    def _build_step(self, decode: str, device: torch.device, compile_mode: str | None) -> str:
        self._step = self._one_step
        if decode == "auto":
            decode = "graph" if device.type == "cuda" else "eager"
        if decode == "eager" or not self.decoder.use_cache:
            return "eager"
        if device.type != "cuda" and decode != "compile":
            raise UsageError(f"--decode {decode} needs a CUDA device; use --decode eager (or auto, or compile) on {device.type}")
        self.decoder.track_host = False  # fixed shapes: the step attends over every slot
        fn = self._one_step
        if decode == "compile" and any(isinstance(m, cpu_weights.Fp16Linear) for m in self.decoder.model.modules()):
            # fbgemm's packed fp16 weights are an object dynamo cannot trace: the step broke into
            # ~25 graphs, ran 2x slower than eagerly, and its guards slowed every other compiled engine
            raise UsageError("--decode compile cannot trace --weights fp16 (fbgemm's packed weights break the graph; "
                             "it ran 2x slower than eager); use --decode eager with fp16, or --weights int8 to compile")
        if decode == "compile":
            # On the CPU, inductor's C++ wrapper calls the kernels from C++ rather than from a
            # Python function (char model, int8 weights: 0.52-0.56 -> 0.51 ms a step), and its
            # kernels run single-threaded: at batch 1 they are tiny, so --threads only sets what
            # PyTorch's own products use. Inductor's options: torch.compile will not combine them with a mode.
            cpu = device.type == "cpu" and compile_mode is None
            how = {"options": {"cpp_wrapper": True, "cpp.threads": 1}} if cpu else {"mode": compile_mode}
            fn = torch.compile(fn, dynamic=False, **how)
        if device.type != "cuda":  # compiled on the CPU: inductor's C++ kernels, no graph to record
            fn()  # compile now, as building a CUDA engine does (a generation resets what this step touched)
            self._step = fn
            return decode
        try:
            self._step = _record_cuda_graph(fn)
        except Exception as e:  # a driver or compiler we cannot record on: stay correct, only slower
            log.warning("CUDA graph recording failed (%s: %s); decoding eagerly", type(e).__name__, str(e).splitlines()[0][:200])
            return "eager"
        return decode

    @torch.no_grad()
    def __call__(self, prompt: torch.Tensor, on_token: Callable[[torch.Tensor], Sequence[bool] | None] | None = None,
                 max_new_tokens: int | None = None) -> torch.Tensor:
        """prompt (B, T0) -> (B, T0 + n) ids, n <= max_new_tokens (default cfg.max_new_tokens).

        A row finishes at its EOS, or when on_token says so; finished rows are padded with EOS
        (or 0 without one) and the result ends where the last row finished. on_token gets each
        step's ids (B,) and may return B bools: True finishes that row (stop strings)."""
        n_new = max_new_tokens or self.cfg.max_new_tokens
        dec, smp = self.decoder, self.sampler
        B, T0 = prompt.shape
        out = torch.empty(B, T0 + n_new, dtype=torch.long, device=prompt.device)  # (B, T0 + N)
        out[:, :T0] = prompt
        smp.start(prompt)
        out[:, T0] = smp.choose(dec.prefill(prompt))
        can_finish = self.eos_id is not None or on_token is not None
        n = T0 + 1  # tokens in `out` so far
        while True:
            if on_token is not None:
                finished = on_token(out[:, n - 1])
                if finished is not None and any(finished):
                    smp.finish(finished)
            if n == T0 + n_new:
                break
            if can_finish and (on_token is not None or (n - T0) % self.sync_every == 0) and bool(smp.done.all()):
                break
            out[:, n] = smp.choose(dec.refill(out[:, :n])) if dec.needs_refill(n) else self._step()
            n += 1
        return out[:, : T0 + int(smp.length.max())]


def generate(model, prompt: torch.Tensor, cfg: SamplingConfig, vocab_size: int, eos_id: int | None = None,
             on_token: Callable[[torch.Tensor], Sequence[bool] | None] | None = None, use_cache: bool = True,
             window: str = "auto", decode: str = "auto") -> torch.Tensor:
    """prompt (B, T0) ids -> (B, T0 + n) ids with n <= cfg.max_new_tokens; see Engine.__call__.
    Row b is sampled with seed cfg.seed + b, so it equals what that seed gives for the prompt alone."""
    return Engine(model, prompt.size(0), vocab_size, cfg, eos_id, use_cache, window, decode)(prompt, on_token)
