"""The token-gather path: select -> gather the chosen keys and values -> approximate, a chunk of queries at a time.

Works for every selector and approximator (the prototype's MLP approximator included), token- or block-level: a
block choice is expanded to its keys. It is the general path, not the fast one: each query copies its K keys and
values (K · hs numbers each) before any arithmetic, a memory traffic that the FLOP count does not see, so on a CPU
it runs 10-50× slower than SDPA (README). Queries are processed ``chunk`` at a time so that neither the T×T scores
nor the gathered keys of every query exist at once.
"""

from __future__ import annotations

from typing import Callable

import torch

from src.sparse.selection import Selection

CHUNK = 512  # queries per chunk ...
CHUNK_BYTES = 256 * 10**6  # ... or fewer, so that one chunk's scores and gathered keys and values stay under this


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of t (B, nh, T, hs) at idx (B, h, R, K) of its first h heads (h <= nh: all of them, or the served heads
    at the front of a generation cache, src/sparse/decode.py) -> (B, h, R, K, hs), without materialising T × T.

    index_select on the flattened rows copies each key's hs contiguous numbers at once (about 1.5× faster on a CPU
    than torch.gather's element-by-element indexing); it is differentiable, so the stages train through it. A
    contiguous t is only viewed, never copied.
    """
    B, nh, T, hs = t.shape
    h = idx.size(1)
    row0 = ((torch.arange(B, device=t.device) * nh)[:, None] + torch.arange(h, device=t.device)) * T  # (b, head, 0)
    return t.reshape(B * nh * T, hs).index_select(0, (idx + row0[..., None, None]).reshape(-1)).view(*idx.shape, hs)


def chunk_rows(B: int, h: int, T: int, hs: int, slots: int, score_cols: int, elem: int,
               chunk: int | None = None) -> int:
    """Queries per chunk: ``chunk`` (default CHUNK), fewer when one chunk's working memory -- ``score_cols`` scores
    per query (T for a token selector), its K = ``slots`` gathered keys and values and their indices -- would pass
    CHUNK_BYTES."""
    per_query = B * h * (3 * score_cols * elem + 3 * slots * hs * elem + 2 * slots * 8)
    return max(1, min(chunk or CHUNK, T, CHUNK_BYTES // max(1, per_query)))


def gather_attention(select_rows: Callable[[torch.Tensor], Selection], approximator, q: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """y (B, h, T, hs): for each chunk of queries, ``select_rows(positions)`` -> gather -> ``approximator``.

    The approximator reads (q, k_sel, v_sel, valid); one with ``reads_keys = False`` (the MLP) gets k_sel None.
    """
    T = q.size(-2)
    reads_keys = getattr(approximator, "reads_keys", True)
    outs = []
    for start in range(0, T, chunk):
        rows = torch.arange(start, min(start + chunk, T), device=q.device)
        sel = select_rows(rows)
        k_sel = gather_rows(k, sel.idx) if reads_keys else None  # (B, h, R, K, hs)
        outs.append(approximator(q[:, :, rows[0]:rows[-1] + 1], k_sel, gather_rows(v, sel.idx), sel.valid))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
