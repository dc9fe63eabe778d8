"""The masked kernel: exact softmax attention over each query's selected keys, as a boolean mask over the scores
of a chunk of queries against every key -- no gathered keys.

Dense work (each query scores all T keys, T² in all), but in the large matrix products a CPU runs fastest, so for a
token selector with the softmax approximator it is 10-40x faster than the gather path at T = 2048 (README): the
kernel that evaluates token-level selectors at long context. It computes the same function as gather + softmax
(tests: 1e-5); it saves no FLOPs, only the gather's memory traffic. ``chunk`` queries at a time keep the scores
of one chunk, not T × T, in memory.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from src.sparse.selection import Selection, selection_mask


def masked_attention(select_rows: Callable[[torch.Tensor], Selection], q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, chunk: int) -> torch.Tensor:
    """q, k, v (B, h, T, hs) -> y (B, h, T, hs): per chunk of queries, ``select_rows(positions)`` -> mask -> SDPA."""
    T = q.size(-2)
    outs = []
    for start in range(0, T, chunk):
        rows = torch.arange(start, min(start + chunk, T), device=q.device)
        allowed = selection_mask(select_rows(rows), T)  # (B, h, R, T): every query keeps at least one key
        outs.append(F.scaled_dot_product_attention(q[:, :, start:start + len(rows)], k, v, attn_mask=allowed))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
