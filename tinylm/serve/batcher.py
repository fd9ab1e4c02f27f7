"""Continuous batching: many requests share one running batch of decoding steps.

The batch has a fixed number of slots S. A request (a Job, with n choices) takes n free slots at
a token boundary, and each slot leaves the batch as soon as its sample ends (EOS, a stop
string, its token limit, or the client going away), freeing the slot for the next request in
the queue. One thread runs the model; the HTTP side only submits jobs and reads events.

Each tick of the loop:
1. rows that just joined (or whose window is full) run their prompt window, in a forward of a
   fixed P rows (`prefill_rows`; windows of equal length share one), and write its last logits
   into their row of the (S, V) logits buffer;
2. every other row feeds its last token through one batched step of fixed shape (S, 1): each
   row at its own position, attending only over its own cache row (SlotCache below);
3. one sampling call over all S rows, each with its own temperature, top-k, top-p, logit bias,
   seed and step count, gives every row its next token.

Same text alone or in a crowd, by construction: nothing a row computes depends on the other
rows. Prefills always have P rows; the decode step and the sampler always have shape (S, ...)
whatever the number of active rows (idle rows feed a dummy token), so each row's numbers go
through the same kernels with the same shapes; attention reads only the row's own cache; and
the noise comes from the counter-based hash of generate/sampling.py keyed by (seed + choice,
step), not from a shared generator. A request therefore gets the text it would get alone with
the same seed, and what `tinylm generate --seed` gives, up to rounding differences between
this step and the engine's kernels (tests/test_serve.py checks both).

Window: when a row outgrows the context it slides as the engine's "slide" policy does (keep the
last 3/4 of the context, re-run them), for every position kind. The engine rolls a RoPE model's
window instead by default, so past the context a RoPE model's text matches `tinylm generate
--window slide`.

Knows token ids and text streams (generate/text.py), not HTTP or JSON.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..generate.engine import model_device
from ..generate.sampling import row_keys, uniform_noise
from ..generate.text import TextStream


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


@dataclass
class RowSampling:
    """One request's sampling settings (already validated by schemas.py)."""
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None  # None = a fresh random seed; choice i uses seed + i
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit


@dataclass
class Job:
    """One request: n samples of the same prompt ids. `emit` is called from the batcher thread
    with ("text", choice, piece), ("end", choice, finish_reason), then ("done", usage) once all
    choices ended, or ("error", message) if the model failed."""
    ids: list[int]
    max_tokens: int
    emit: Callable[[tuple], None]
    sampling: RowSampling = field(default_factory=RowSampling)
    n: int = 1
    stops: list[str] = field(default_factory=list)
    cancelled: bool = False
    left: int = 0  # choices still running
    completion_tokens: int = 0


class Row:
    """One choice of a job, in one slot."""

    def __init__(self, job: Job, choice: int, slot: int, tokenizer):
        self.job, self.choice, self.slot = job, choice, slot
        self.seq = list(job.ids)  # prompt and generated ids
        self.start = 0  # where the window begins in seq
        self.chosen = 0  # tokens sampled so far (the sampler's step)
        self.fresh = True  # its window has not been run yet
        self.text = TextStream(tokenizer, job.stops, tokenizer.eos_id)


class SlotCache:
    """Keys and values for S independent sequences, each at its own position; the object that
    the attention modules call (`attend`, the interface of model/kv_cache.KVCache).

    Buffer shapes (L layers, S slots, nh heads, ctx positions, hs head size):
        k, v: (L, S + 1, nh, ctx, hs)    row S is scratch: the padding rows of a prefill write there
    Two modes: `for_prefill(slots, T)`: P windows of T tokens, positions 0..T-1, row i into slot
    slots[i]; `for_step(positions)`: one token per slot, slot s at positions[s], batch S."""

    def __init__(self, model, slots: int):
        cfg = model.cfg
        p = model.wte.weight
        shape = (cfg.n_layer, slots + 1, cfg.n_head, cfg.context_size, cfg.head_size)
        self.k = torch.zeros(shape, device=p.device, dtype=p.dtype)  # (L, S + 1, nh, ctx, hs)
        self.v = torch.zeros(shape, device=p.device, dtype=p.dtype)  # (L, S + 1, nh, ctx, hs)
        self.S = slots
        self.slot_ids = torch.arange(cfg.context_size, device=p.device)  # (ctx,)
        self.rows = torch.arange(slots, device=p.device)  # (S,)
        self.zero = torch.zeros((), device=p.device, dtype=p.dtype)
        self.shut = torch.full((), float("-inf"), device=p.device, dtype=p.dtype)
        self.slots: torch.Tensor | None = None
        self.T = 0
        self.positions: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def for_prefill(self, slots: torch.Tensor, T: int) -> None:
        self.slots, self.T, self.positions = slots, T, None  # slots (P,)
        ids = self.slot_ids[:T]
        self.mask = torch.where(ids[None, :] <= ids[:, None], self.zero, self.shut)  # (T, T), causal

    def for_step(self, positions: torch.Tensor) -> None:
        self.slots, self.positions = None, positions  # (S,)
        self.mask = torch.where(self.slot_ids[None, :] <= positions[:, None], self.zero, self.shut)[:, None, None]  # (S, 1, 1, ctx)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.slots is not None:  # prefill: q, k, v (P, nh, T, hs), the whole window: attend over it
            self.k[layer, self.slots, :, : self.T] = k.to(self.k.dtype)
            self.v[layer, self.slots, :, : self.T] = v.to(self.v.dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)  # (P, nh, T, hs)
        # one step: q, k, v (S, nh, 1, hs); slot s stores at its own position, reads its own row
        self.k[layer, self.rows, :, self.positions] = k[:, :, 0].to(self.k.dtype)  # (S, nh, hs)
        self.v[layer, self.rows, :, self.positions] = v[:, :, 0].to(self.v.dtype)
        kb, vb = self.k[layer, : self.S], self.v[layer, : self.S]  # (S, nh, ctx, hs) each, views
        return F.scaled_dot_product_attention(q, kb, vb, attn_mask=self.mask)  # (S, nh, 1, hs)


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                bias: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """sampling.sample_next with settings per row: logits (S, V), bias (S, V), the rest (S,) ->
    ids (S,). Row s: logits + bias, then argmax if temperature[s] == 0, else the top-k / top-p
    filtered softmax at that temperature sampled by Gumbel-max with the noise of (keys[s],
    steps[s]). Every operation works row by row, so a row's id does not depend on the others."""
    V = logits.size(-1)
    x = logits.float() + bias  # (S, V)
    greedy = x.argmax(dim=-1)  # (S,)
    x = x / torch.where(temperature > 0, temperature, 1.0)[:, None]
    # top-k: keep values >= the k-th largest (ties kept, as top_k_filter); k = 0 or >= V: all
    k = torch.where((top_k <= 0) | (top_k >= V), V, top_k)  # (S,)
    kth = x.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # (S, 1)
    x = x.masked_fill(x < kth, float("-inf"))
    # top-p: as top_p_filter, drop a token once the mass before it reaches p; p = 1: off
    sorted_x, order = torch.sort(x, dim=-1, descending=True)  # (S, V) each
    probs = sorted_x.softmax(dim=-1)
    drop_sorted = ((probs.cumsum(dim=-1) - probs) >= top_p[:, None]) & (top_p < 1)[:, None]  # (S, V)
    x = x.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    gumbel = -torch.log(-torch.log(uniform_noise(keys, steps, V)))  # (S, V)
    sampled = (x + gumbel).argmax(dim=-1)  # (S,)
    return torch.where(temperature > 0, sampled, greedy)


class Batcher:
    """The running batch. `submit` and `cancel` are called from any thread; `run` is the loop
    of the model's thread (`start` starts it)."""

    def __init__(self, model, tokenizer, slots: int = 8, max_queue: int = 64, prefill_rows: int = 1):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.S, self.max_queue = slots, max_queue
        self.P = max(1, min(prefill_rows, slots))  # windows per prefill forward: always this many rows
        self.ctx = model.cfg.context_size
        self.slide = max(1, self.ctx // 4)  # as the engine's default
        self.V = tokenizer.vocab_size
        self.device = model_device(model)
        self.cache = SlotCache(model, slots)
        self.rows: list[Row | None] = [None] * slots
        self.waiting: deque[Job] = deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.peak = 0  # most rows that shared one step since the last reset (tests and /health read it)
        self.thread: threading.Thread | None = None
        dev = self.device
        self.temperature = torch.zeros(slots, device=dev)  # (S,)
        self.top_k = torch.zeros(slots, dtype=torch.long, device=dev)  # (S,)
        self.top_p = torch.ones(slots, device=dev)  # (S,)
        self.keys = torch.zeros(slots, dtype=torch.long, device=dev)  # (S,)
        self.bias = torch.zeros(slots, self.V, device=dev)  # (S, V)
        self.logits = torch.zeros(slots, self.V, device=dev)  # (S, V): this tick's next-token logits

    # ---- called from the HTTP side -------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if job.n > self.S:
            raise ValueError(f"n={job.n} is more than the server's {self.S} slots")
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: its rows leave at the next token boundary."""
        with self.cv:
            job.cancelled = True
            self.cv.notify()

    def stats(self) -> dict:
        with self.cv:
            return {"slots": self.S, "busy": sum(r is not None for r in self.rows), "queued": len(self.waiting),
                    "peak": self.peak}

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="tinylm-batcher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()
        if self.thread is not None:
            self.thread.join(timeout=10)

    # ---- the model's thread --------------------------------------------------------------------

    def run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cv:
                    while not self.stopping and not self.waiting and all(r is None for r in self.rows):
                        self.cv.wait()
                    if self.stopping:
                        return
                    self._leave_cancelled()
                    self._admit()
                try:
                    self.tick()
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: fail these requests, keep serving
                    self._fail_all(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")

    def _leave_cancelled(self) -> None:
        for s, row in enumerate(self.rows):
            if row is not None and row.job.cancelled:
                self.rows[s] = None
        self.waiting = deque(j for j in self.waiting if not j.cancelled)

    def _admit(self) -> None:
        """Give queued jobs free slots, first come first served (a job waits for all n of them)."""
        free = [s for s, r in enumerate(self.rows) if r is None]
        while self.waiting and len(free) >= self.waiting[0].n:
            job = self.waiting.popleft()
            job.left = job.n
            cfg = job.sampling
            seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ()))
            for i in range(job.n):
                s = free.pop(0)
                self.rows[s] = Row(job, i, s, self.tokenizer)
                self.temperature[s], self.top_k[s], self.top_p[s] = cfg.temperature, cfg.top_k, cfg.top_p
                self.keys[s] = row_keys(seed + i, 1)[0]  # what `seed + i` gives the engine's row
                self.bias[s].zero_()
                for tok, b in cfg.logit_bias.items():
                    self.bias[s, tok] = b

    def _fail_all(self, message: str) -> None:
        jobs = {id(r.job): r.job for r in self.rows if r is not None}
        self.rows = [None] * self.S
        for job in jobs.values():
            job.emit(("error", message))

    def _window(self, row: Row) -> list[int]:
        """The ids row's next prefill runs: the prompt's last `ctx` tokens when it has just
        joined, else (its window is full) the window after jumping forward by `slide`, as the
        engine's slide policy does."""
        n = len(row.seq)
        if row.fresh:
            row.start, row.fresh = max(0, n - self.ctx), False
        else:
            row.start = n - (self.ctx - self.slide)
        return row.seq[row.start:]

    def _prefill(self, rows: list[Row]) -> None:
        """Run rows' windows and write their last logits into self.logits. Windows of equal
        length share a forward of always P rows (padding rows repeat token 0 and write to the
        scratch cache row), so a window's numbers never depend on what else is prefilled."""
        by_len: dict[int, list[tuple[Row, list[int]]]] = {}
        for r in rows:
            w = self._window(r)
            by_len.setdefault(len(w), []).append((r, w))
        for T, group in by_len.items():
            pos = self.cache.slot_ids[:T]  # (T,)
            for i in range(0, len(group), self.P):
                part = group[i:i + self.P]
                pad = self.P - len(part)
                idx = torch.tensor([w for _, w in part] + [[0] * T] * pad, dtype=torch.long, device=self.device)  # (P, T)
                slots = torch.tensor([r.slot for r, _ in part] + [self.S] * pad, device=self.device)  # (P,)
                self.cache.for_prefill(slots, T)
                x = self.model.trunk(idx, self.cache, pos=pos, rope=self._rope(pos))  # (P, T, C)
                logits = self.model.head(x[:, -1])[:, : self.V]  # (P, V)
                self.logits.index_copy_(0, slots[: len(part)], logits[: len(part)].float())

    def _rope(self, pos: torch.Tensor):
        """(cos, sin) for positions pos, shaped to broadcast over (B, nh, T, hs/2); None without RoPE."""
        if self.model.cfg.positions != "rope":
            return None
        cos, sin = self.model.rope_cos[pos], self.model.rope_sin[pos]  # (..., hs/2)
        if pos.dim() == 2:  # one step: (S, 1) -> (S, 1, 1, hs/2), a position per row
            return cos[:, None], sin[:, None]
        return cos, sin

    def _step_logits(self, rows: list[Row]) -> torch.Tensor:
        """One token for every slot, batch S (idle slots feed token 0 at the last position: the
        slot is written before any query reads it) -> logits (S, V)."""
        tok, pos = [0] * self.S, [self.ctx - 1] * self.S
        for r in rows:
            tok[r.slot], pos[r.slot] = r.seq[-1], len(r.seq) - 1 - r.start
        idx = torch.tensor(tok, dtype=torch.long, device=self.device)[:, None]  # (S, 1)
        p = torch.tensor(pos, dtype=torch.long, device=self.device)  # (S,)
        self.cache.for_step(p)
        x = self.model.trunk(idx, self.cache, pos=p[:, None], rope=self._rope(p[:, None]))  # (S, 1, C)
        return self.model.head(x[:, -1])[:, : self.V]  # (S, V)

    def tick(self) -> None:
        active = [r for r in self.rows if r is not None]
        if not active:
            return
        self.peak = max(self.peak, len(active))
        starting = [r for r in active if r.fresh or len(r.seq) - r.start > self.ctx]
        stepping = [r for r in active if not (r.fresh or len(r.seq) - r.start > self.ctx)]
        if starting:
            self._prefill(starting)
        if stepping:
            out = self._step_logits(stepping)
            idx = torch.tensor([r.slot for r in stepping], device=self.device)
            self.logits.index_copy_(0, idx, out.index_select(0, idx).float())
        steps = torch.zeros(self.S, dtype=torch.long)
        for r in active:
            steps[r.slot] = r.chosen
        nxt = sample_rows(self.logits, self.temperature, self.top_k, self.top_p, self.bias, self.keys,
                          steps.to(self.device)).tolist()
        for r in active:
            self._advance(r, nxt[r.slot])

    def _advance(self, row: Row, tok: int) -> None:
        row.seq.append(tok)
        row.chosen += 1
        job = row.job
        job.completion_tokens += 1
        piece = row.text.push(tok)
        reason = "stop" if row.text.stopped else "length" if row.chosen >= job.max_tokens else None
        if reason == "length":
            piece += row.text.close()
        if piece:
            job.emit(("text", row.choice, piece))
        if reason is None:
            return
        with self.cv:
            self.rows[row.slot] = None
        job.emit(("end", row.choice, reason))
        job.left -= 1
        if job.left == 0:
            job.emit(("done", {"prompt_tokens": len(job.ids), "completion_tokens": job.completion_tokens,
                               "total_tokens": len(job.ids) + job.completion_tokens}))
