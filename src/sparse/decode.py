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

A block choice is copied out of the cache once per query block, as one tile of n · block_size keys and values (the
own block first, its rows filled in as its queries arrive): the block's later steps copy nothing and run one
attention over the tile (SDPA for exact softmax; the MLP approximator where it applies). A token selector's keys
are gathered from the cache at every step, as the gather path does for one query (src/sparse/gather.py). The budget
is counted at the cache's length (the model's T), as in the hybrid's forward pass over a whole sequence, so that
prefill + decode give the same outputs as that pass (tests). Non-causal selectors (``block_oracle`` reads the later
queries of its block) cannot generate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.sparse.choice import causal_block_topk, n_blocks
from src.sparse.gather import gather_rows
from src.sparse.selection import causal_topk


def gather_blocks(cache: torch.Tensor, idx: torch.Tensor, block_size: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Whole key blocks idx (B, h, 1, n) of a cache buffer's first h heads -> one tile (B, h, n * block_size, hs),
    block after block (rows past the buffer's end, in a last partial block, repeat its last row), into ``out`` when
    given (a tile allocated once: a fresh megabyte per block costs more than copying it)."""
    B, nh, L, hs = cache.shape
    h, n = idx.size(1), idx.size(-1)
    if L % block_size == 0:  # a block is one contiguous row of block_size * hs numbers
        nb = L // block_size
        row0 = ((torch.arange(B, device=idx.device) * nh)[:, None] + torch.arange(h, device=idx.device)) * nb
        rows = (idx.view(B, h, n) + row0[..., None]).reshape(-1)
        flat = cache.view(B * nh * nb, block_size * hs)
        if out is None:
            return flat.index_select(0, rows).view(B, h, n * block_size, hs)
        torch.index_select(flat, 0, rows, out=out.view(B * h * n, block_size * hs))
        return out
    tok = (idx[..., None] * block_size + torch.arange(block_size, device=idx.device)).clamp(max=L - 1)
    tile = gather_rows(cache, tok.flatten(-2))[:, :, 0]
    return tile if out is None else out.copy_(tile)


def decode_problem(selector, name: str = "") -> str | None:
    """Why this selector cannot generate (None: it can), one line naming the fix."""
    if not getattr(selector, "causal", True):
        return (f"selector={name or type(selector).__name__} reads the later queries of its block, so it cannot "
                "generate one token at a time: sample with a causal selector (block, block_window, indexer, ...)")
    return None


class SparseDecoder:
    """The sparse heads of one layer during generation: built from the prompt (prefill), then ``step`` per token."""

    def __init__(self, sparse, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """x (B, T0, C) the prompt's layer input; q (B, h, T0, hs) its served heads' queries; k, v the layer's whole
        cache buffers (B, nh, max_len, hs), the served heads first, the prompt already written. The budget is
        counted at max_len."""
        problem = decode_problem(sparse.selector)
        if problem:
            raise ValueError(problem)
        self.sparse, self.selector, self.max_len = sparse, sparse.selector, k.size(-2)
        self.blocks = getattr(self.selector, "picks_blocks", False)
        self.summarised = hasattr(self.selector, "summarise")
        self.exact = getattr(sparse.approximator, "exact_softmax", False)
        B, T0, C = x.shape
        self.h = q.size(1)  # served heads: the first h of the cache
        if self.summarised:
            self.summaries = self.selector.summarise(x, self.max_len)
        else:  # the inputs every step asks the selector about again
            self.x = x.new_zeros(B, self.max_len, C)
            self.q = q.new_zeros(*q.shape[:2], self.max_len, q.size(-1))
            self.x[:, :T0], self.q[:, :, :T0] = x, q
        self.tile: list[torch.Tensor] | None = None  # the query block's keys, values (B, h, n · bs, hs), own block
        #                                            first, and which of them the current query reads (B, h, 1, n · bs)
        if self.blocks:
            bs = self.selector.block_size
            self.n_keep = sparse.budget.blocks(self.max_len, bs)
            if T0 % bs:  # the prompt ends inside a block: its choice, made at its first query, serves the next steps
                first = T0 // bs * bs
                self.start_block(x[:, first:first + 1], first, T0 - 1, k, v)
        else:
            self.top_k = sparse.keys_read(self.max_len)

    def append(self, x_t: torch.Tensor, q_t: torch.Tensor, t: int) -> None:
        """Take in the token at position t: x_t (B, 1, C), q_t (B, h, 1, hs)."""
        if self.summarised:
            self.selector.add_summary(self.summaries, x_t, t)
        else:
            self.x[:, t], self.q[:, :, t] = x_t[:, 0], q_t[:, :, 0]

    def choose(self, x_t: torch.Tensor, t: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The key blocks of the query block whose first query x_t is at position t (k: the served heads' keys so
        far, for selectors that read them) -> idx, valid (B, h, 1, n), the own block first."""
        bs = self.selector.block_size
        row = torch.tensor([t // bs], device=x_t.device)
        if self.summarised:
            scores = self.selector.summary_scores(self.summaries, x_t, t)  # (B, h, 1, r + 1)
        else:
            scores = self.selector.block_scores(self.x[:, :t + 1], self.q[:, :, :t + 1], k[:, :, :t + 1], row)
        scores = F.pad(scores, (0, n_blocks(self.max_len, bs) - scores.size(-1)))  # as wide as a full pass's
        c = causal_block_topk(scores, self.n_keep, row, bs, t + 1, self.sparse.budget.mass,
                              getattr(self.selector, "recent", 0))
        return c.idx, c.valid

    def start_block(self, x_first: torch.Tensor, first: int, t: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Choose the blocks of the query block that starts at ``first`` (x_first its first query) and copy them
        into the tile; the query at t reads the chosen keys up to t. k, v: the whole cache buffers."""
        bs = self.selector.block_size
        idx, valid = self.choose(x_first, first, k[:, :self.h])
        tok = idx[..., None] * bs + torch.arange(bs, device=idx.device)  # (B, h, 1, n, bs)
        seen = (valid[..., None] & (tok <= t)).flatten(-2)  # (B, h, 1, n · bs): the rows of later positions (the
        #     rest of the own block, filled in step by step) and of invalid slots are hidden, never read
        if self.tile is None:
            self.tile = [gather_blocks(k, idx, bs), gather_blocks(v, idx, bs), seen]
        else:  # into the same buffers
            self.tile = [gather_blocks(k, idx, bs, self.tile[0]), gather_blocks(v, idx, bs, self.tile[1]), seen]

    def attend(self, q_t: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """The approximator over keys, values (B, h, K, hs) of which the query q_t (B, h, 1, hs) reads ``read`` (B, h,
        1, K) -> (B, h, 1, hs): SDPA for exact softmax, else the approximator as the gather path calls it."""
        if self.exact:
            return F.scaled_dot_product_attention(q_t, keys, values, attn_mask=read)
        a = self.sparse.approximator
        k_sel = keys[:, :, None] if getattr(a, "reads_keys", True) else None
        return a(q_t, k_sel, values[:, :, None], read)

    def step(self, x_t: torch.Tensor, q_t: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
        """The served heads' output for the token at position t, (B, h, 1, hs). x_t (B, 1, C); q_t (B, h, 1, hs); k,
        v the whole cache buffers (B, nh, max_len, hs), the served heads first, the token's key and value written."""
        h = self.h
        self.append(x_t, q_t, t)
        if self.blocks:
            bs = self.selector.block_size
            if t % bs == 0:  # a new block of queries (one begun by the prompt has its tile from __init__)
                self.start_block(x_t, t, t, k, v)
            else:  # the own block is the tile's first: its row t % bs is the new token's
                j = t % bs
                self.tile[0][:, :, j] = k[:, :h, t]
                self.tile[1][:, :, j] = v[:, :h, t]
                self.tile[2][..., j] = True
            return self.attend(q_t, *self.tile)
        row = torch.tensor([t], device=x_t.device)
        if self.summarised:
            scores = self.selector.summary_scores(self.summaries, x_t, t)  # (B, h, 1, t + 1)
        else:
            ctx = self.selector.prepare(self.x[:, :t + 1], self.q[:, :, :t + 1], k[:, :h, :t + 1])
            if getattr(self.selector, "whole_blocks", False):  # its own rule: whole blocks, own block first
                sel = self.selector.select_rows(ctx, row, self.top_k, self.sparse.budget.mass)
                return self.attend(q_t, gather_rows(k, sel.idx)[:, :, 0], gather_rows(v, sel.idx)[:, :, 0], sel.valid)
            scores = self.selector.score_rows(ctx, row)
        sel = causal_topk(F.pad(scores, (0, self.max_len - scores.size(-1))), self.top_k, row,
                          self.sparse.budget.mass)
        return self.attend(q_t, gather_rows(k, sel.idx)[:, :, 0], gather_rows(v, sel.idx)[:, :, 0], sel.valid)
