"""Sparse decoding: one layer's sparse heads generating one token at a time against the KV cache (src/model.py).

A decode step is bound by reading the cache: dense attention reads every cached key and value, a sparse step reads
the chosen ones only. ``SparseDecoder`` keeps, beside the cache, what its selector needs to choose without reading
the keys:

* a selector with *summaries* (``summarise`` / ``add_summary`` / ``summary_scores``) keeps them up to date, one
  token at a time. The block selector keeps the sum of the index keys of every key block (its mean index key: the
  compressed key cache of MoBA and SeerAttention-R, d_index numbers per block and head), and chooses once per block
  of queries, when the block's first query arrives: it scores the completed blocks' summaries, keeps the own block
  and the best earlier ones, and every query of the block reads that choice -- exactly the choice the hybrid makes
  for the same sequence in one forward pass. The indexer keeps every position's index key (d_index numbers per key,
  scored each step: DeepSeek V3.2's lightning indexer at decode).
* any other causal selector (the window baselines, the prototype's MLP, the token oracle) is asked again each step
  over the cached inputs -- the same choice, at a cost that grows with the context.

The chosen keys and values are gathered from the cache and handed to the approximator (exact softmax, or the MLP
where it applies), as the gather path does for one query (src/sparse/gather.py). The budget is counted at the
cache's length (the model's T), as in the hybrid's forward pass over a whole sequence, so that prefill + decode give
the same outputs as that pass (tests). Non-causal selectors (``block_oracle`` reads the later queries of its block)
cannot generate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.sparse.choice import block_keys, causal_block_topk, n_blocks
from src.sparse.selection import Selection, causal_topk


def gather_cached(cache: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of a whole cache buffer (B, nh, max_len, hs) at idx (B, h, R, K) of its *first* h heads -> (B, h, R, K,
    hs): no copy of the cache (a head subset or a prefix of positions would be one), only of the K chosen rows."""
    B, nh, L, hs = cache.shape
    h = idx.size(1)
    row0 = ((torch.arange(B, device=idx.device) * nh)[:, None] + torch.arange(h, device=idx.device)) * L  # (B, h)
    return cache.view(B * nh * L, hs).index_select(0, (idx + row0[..., None, None]).reshape(-1)).view(*idx.shape, hs)


def decode_problem(selector, name: str = "") -> str | None:
    """Why this selector cannot generate (None: it can), one line naming the fix."""
    if not getattr(selector, "causal", True):
        return (f"selector={name or type(selector).__name__} reads the later queries of its block, so it cannot "
                "generate one token at a time: sample with a causal selector (block, block_window, indexer, ...)")
    return None


class SparseDecoder:
    """The sparse heads of one layer during generation: built from the prompt (prefill), then ``step`` per token.

    ``max_len``: the positions of the KV cache, which is also the length the budget is counted at.
    """

    def __init__(self, sparse, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, max_len: int):
        """x (B, T0, C) the prompt's layer input; q, k (B, h, T0, hs) of the served heads."""
        problem = decode_problem(sparse.selector)
        if problem:
            raise ValueError(problem)
        self.sparse, self.selector, self.max_len = sparse, sparse.selector, max_len
        self.blocks = getattr(self.selector, "picks_blocks", False)
        self.summarised = hasattr(self.selector, "summarise")
        B, T0, C = x.shape
        if self.summarised:
            self.summaries = self.selector.summarise(x, max_len)
        else:  # the inputs every step asks the selector about again
            self.x = x.new_zeros(B, max_len, C)
            self.q = q.new_zeros(*q.shape[:2], max_len, q.size(-1))
            self.x[:, :T0], self.q[:, :, :T0] = x, q
        self.choice: tuple[torch.Tensor, torch.Tensor] | None = None  # (idx, valid) (B, h, 1, n): the query block's
        if self.blocks:
            bs = self.selector.block_size
            self.n_keep = sparse.budget.blocks(max_len, bs)
            if T0 % bs:  # the prompt ends inside a block: its choice, made at its first query, serves the next steps
                first = T0 // bs * bs
                self.choice = self.choose(x[:, first:first + 1], first, k)
        else:
            self.top_k = sparse.budget.keys(max_len)

    def append(self, x_t: torch.Tensor, q_t: torch.Tensor, t: int) -> None:
        """Take in the token at position t: x_t (B, 1, C), q_t (B, h, 1, hs)."""
        if self.summarised:
            self.selector.add_summary(self.summaries, x_t, t)
        else:
            self.x[:, t], self.q[:, :, t] = x_t[:, 0], q_t[:, :, 0]

    def choose(self, x_t: torch.Tensor, t: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key blocks of the query block whose first query is x_t, at position t (k: the served heads' keys so
        far, for selectors that read them) -> idx, valid (B, h, 1, n)."""
        bs = self.selector.block_size
        r = t // bs
        if self.summarised:
            scores = self.selector.summary_scores(self.summaries, x_t, t)  # (B, h, 1, r + 1)
        else:
            scores = self.selector.block_scores(self.x[:, :t + 1], self.q[:, :, :t + 1], k[:, :, :t + 1],
                                                torch.tensor([r], device=x_t.device))
        scores = F.pad(scores, (0, n_blocks(self.max_len, bs) - scores.size(-1)))  # as wide as a full pass's
        c = causal_block_topk(scores, self.n_keep, torch.tensor([r], device=x_t.device), bs, t + 1,
                              self.sparse.budget.mass, getattr(self.selector, "recent", 0))
        return c.idx, c.valid

    def select(self, x_t: torch.Tensor, t: int, k: torch.Tensor) -> Selection:
        """The keys the token at position t reads, (B, h, 1, K)."""
        row = torch.tensor([t], device=x_t.device)
        if self.blocks:
            if t % self.selector.block_size == 0 or self.choice is None:
                self.choice = self.choose(x_t, t, k)
            return block_keys(*self.choice, row, self.selector.block_size)
        if self.summarised:
            scores = self.selector.summary_scores(self.summaries, x_t, t)  # (B, h, 1, t + 1)
        else:
            ctx = self.selector.prepare(self.x[:, :t + 1], self.q[:, :, :t + 1], k[:, :, :t + 1])
            scores = self.selector.score_rows(ctx, row)
        scores = F.pad(scores, (0, self.max_len - scores.size(-1)))
        return causal_topk(scores, self.top_k, row, self.sparse.budget.mass)

    def step(self, x_t: torch.Tensor, q_t: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        """The served heads' output for the token at position t, (B, h, 1, hs). x_t (B, 1, C); q_t (B, h, 1, hs); k,
        v the whole cache buffers (B, nh, max_len, hs), the served heads first, with the token's key and value
        already written."""
        self.append(x_t, q_t, t)
        sel = self.select(x_t, t, k[:, :q_t.size(1)])
        approximator = self.sparse.approximator
        k_sel = gather_cached(k, sel.idx) if getattr(approximator, "reads_keys", True) else None
        return approximator(q_t, k_sel, gather_cached(v, sel.idx), sel.valid)
