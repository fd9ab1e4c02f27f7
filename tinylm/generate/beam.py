"""Beam search over token ids: the most likely continuation under the model, found by keeping the
`beam_width` best partial sequences at each step.

Drives engine.py's Decoder (the model's own forward with the KV cache and its window policy),
reordering the cache rows as beams are chosen. Knows nothing about text (text.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..util.errors import UsageError
from .engine import Decoder
from .sampling import check_request


@torch.no_grad()
def beam_search(model, prompt: torch.Tensor, vocab_size: int, beam_width: int = 4, max_new_tokens: int = 100,
                eos_id: int | None = None, length_penalty: float = 1.0, use_cache: bool = True,
                window: str = "auto") -> list[int]:
    """Return the most likely continuation of prompt (1, T0) found with `beam_width` beams, as the
    full id list (prompt included). A beam's score is its summed log-probability divided by
    (generated length ** length_penalty) (Wu et al. 2016 use a softer form of the same idea).

    An EOS among the `beam_width` best candidates of a step finishes that beam (as in HF
    transformers, EOS further down the list is ignored, which makes width 1 exactly greedy).
    The search stops when `beam_width` beams have finished and the best of them scores at least
    the best live beam, or after max_new_tokens."""
    check_request(beams=beam_width)
    if max_new_tokens < 1:
        raise UsageError(f"--tokens must be at least 1, got {max_new_tokens}")
    model.eval()
    W, device = beam_width, prompt.device
    dec = Decoder(model, W, vocab_size, use_cache, window)
    seq = prompt[:1].expand(W, -1)  # (W, T0): every beam starts as the prompt...
    scores = torch.full((W,), float("-inf"), device=device)
    scores[0] = 0.0  # ...but only one is live, so step 1 does not pick W copies of one token
    logits = dec.prefill(seq)
    finished: list[tuple[float, list[int]]] = []  # (normalised score, ids)
    for step in range(1, max_new_tokens + 1):
        cand = (scores[:, None] + F.log_softmax(logits.float(), dim=-1)).view(-1)  # (W * V,)
        top_scores, top_idx = cand.topk(min(2 * W, cand.numel()))
        keep: list[tuple[int, int, float]] = []  # (parent, token, score)
        for rank, (s, i) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            if s == float("-inf") or len(keep) == W:
                break
            parent, tok = divmod(i, vocab_size)
            if eos_id is not None and tok == eos_id:
                if rank < W:
                    finished.append((s / step ** length_penalty, seq[parent].tolist() + [tok]))
                continue
            keep.append((parent, tok, s))
        if not keep:
            break
        best_live = keep[0][2] / step ** length_penalty
        if len(finished) >= W and max(f[0] for f in finished) >= best_live:
            return max(finished, key=lambda f: f[0])[1]
        keep += [(keep[0][0], keep[0][1], float("-inf"))] * (W - len(keep))  # pad dead rows (tiny vocabularies)
        index = torch.tensor([p for p, _, _ in keep], device=device)
        seq = torch.cat([seq[index], torch.tensor([t for _, t, _ in keep], device=device)[:, None]], dim=1)  # (W, T + 1)
        scores = torch.tensor([s for _, _, s in keep], device=device)
        if step == max_new_tokens:
            break
        dec.reorder(index)
        logits = dec.step(seq)
    n = seq.size(1) - prompt.size(1)  # out of tokens (or live beams): unfinished beams compete too
    if n > 0:
        finished += [(s / n ** length_penalty, seq[i].tolist()) for i, s in enumerate(scores.tolist()) if s > float("-inf")]
    return max(finished, key=lambda f: f[0])[1]
