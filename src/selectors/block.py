"""A content-based *block* selector in the spirit of MoBA and SeerAttention: pick whole blocks of keys.

Keys are grouped in blocks of ``block_size`` consecutive positions (default 16; the last block may be shorter).
Per served head, small learned projections of the layer input give index queries and keys of width d_index
(as src/selectors/indexer.py); a block's score for query t is q_t · mean(k over the block) / sqrt(d_index), so
scoring costs Θ(T · T/block_size · d_index) per head instead of the indexer's Θ(T² · d_index). (The projection
is linear, so a block's mean index key is computed as the projection of the block's mean input.)

Causality: a block before the query's own block lies wholly in the past. The query's own block also holds keys
after it, so its score uses the mean of the keys from the block's start up to the query only (a prefix mean).
The own block is always kept (as MoBA's current block): ``select`` and ``select_blocks`` rank it first, above
every earlier block, and fill the rest with the best-scoring earlier blocks.

Two views of one choice:
* ``scores`` / ``select`` (the KeySelector API, what the hybrid and the KL distillation use): token-level scores
  (B, h, T, T) in which every key carries its block's score, then the usual causal top-K over keys;
* ``select_blocks``: the block-level choice (B, h, T, n_blocks) per query, or (B, h, n_q_blocks, n_blocks) shared
  by each block of queries (chosen by the block's *first* query, so that no query's choice depends on later
  ones), for block-sparse kernels (src/bench.py turns it into a FlexAttention BlockMask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.selectors.base import KeySelector, Selection, causal_topk


@dataclass
class BlockChoice:
    idx: torch.Tensor  # (B, h, R, n) chosen block indices: the query's own block first, then by score
    valid: torch.Tensor  # (B, h, R, n) bool: False for slots of queries with fewer than n blocks so far
    rows: torch.Tensor  # (R,) the position of the query that made each row's choice


def n_blocks(T: int, block_size: int) -> int:
    return -(-T // block_size)  # the last block may be shorter


def block_keys(choice: BlockChoice, block_size: int) -> Selection:
    """The chosen blocks as key positions: Selection with idx, valid (B, h, R, n * block_size).

    Keys after the row's query (the rest of its own block, or past the end) are invalid and point at the query.
    """
    B, h, R, n = choice.idx.shape
    tok = choice.idx[..., None] * block_size + torch.arange(block_size, device=choice.idx.device)  # (B,h,R,n,bs)
    q = choice.rows.view(R, 1, 1)
    valid = choice.valid[..., None] & (tok <= q)
    idx = torch.where(valid, tok, q)
    return Selection(idx=idx.reshape(B, h, R, n * block_size), valid=valid.reshape(B, h, R, n * block_size))


class BlockSelector(KeySelector):
    default_loss = "kl"

    def __init__(self, n_heads: int, d_model: int, d_index: int = 16, block_size: int = 16):
        super().__init__()
        if block_size <= 0:
            raise ValueError(f"selector.block_size={block_size} must be a positive number of keys")
        self.n_heads, self.d_index, self.block_size = n_heads, d_index, block_size
        self.wq = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.wk = nn.Linear(d_model, n_heads * d_index, bias=False)

    # -- the pieces -----------------------------------------------------------------------------------------

    def _project(self, w: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """(B, R, C) -> (B, h, R, d_index): index vectors of every served head."""
        B, R, _ = x.shape
        return w(x).view(B, R, self.n_heads, self.d_index).transpose(1, 2)

    def _blocked(self, t: torch.Tensor) -> torch.Tensor:
        """(..., T, d) -> (..., nb, block_size, d), zero-padded at the end."""
        pad = n_blocks(t.size(-2), self.block_size) * self.block_size - t.size(-2)
        return F.pad(t, (0, 0, 0, pad)).unflatten(-2, (-1, self.block_size))

    def block_means(self, t: torch.Tensor) -> torch.Tensor:
        """(..., T, d) -> the mean of every block (..., nb, d); the last block over its own rows only."""
        T = t.size(-2)
        count = T - torch.arange(n_blocks(T, self.block_size), device=t.device) * self.block_size
        return self._blocked(t).sum(-2) / count.clamp(max=self.block_size)[:, None]

    def prefix_means(self, t: torch.Tensor) -> torch.Tensor:
        """(..., T, d) -> at each position t, the mean of the rows from t's block start up to t (..., T, d)."""
        T = t.size(-2)
        csum = self._blocked(t).cumsum(-2).flatten(-3, -2)[..., :T, :]
        return csum / (torch.arange(T, device=t.device) % self.block_size + 1)[:, None]

    def block_index(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> index queries of the queries at ``rows`` (all when None), (B, h, R, d_index), and the
        block keys (B, h, nb, d_index). A block key is the projection of the block's mean input: the same as the
        mean of its keys' index keys (the projection is linear), for 1/block_size of the work."""
        return self._project(self.wq, x if rows is None else x[:, rows]), self._project(self.wk, self.block_means(x))

    def choose(self, qi: torch.Tensor, kb: torch.Tensor, rows: torch.Tensor, n_keep: int) -> BlockChoice:
        """Blocks for the queries at positions ``rows`` (R,): qi (B, h, R, d) their index queries, kb (B, h, nb, d)
        the block keys -> BlockChoice of n_keep blocks each. Only blocks before the query's own are scored."""
        nb = kb.size(-2)
        if not 0 < n_keep <= nb:
            raise ValueError(f"n_blocks={n_keep} must be in 1..{nb} (the number of blocks)")
        scores = qi @ kb.transpose(-2, -1) / math.sqrt(self.d_index)  # (B, h, R, nb)
        own = (rows // self.block_size)[:, None]  # (R, 1)
        blk = torch.arange(nb, device=qi.device)
        scores = scores.masked_fill(blk > own, float("-inf")).masked_fill(blk == own, float("inf"))
        idx = scores.topk(n_keep, dim=-1).indices  # (B, h, R, n_keep)
        valid = torch.arange(n_keep, device=qi.device) <= own  # (R, n_keep): block c has c + 1 candidates
        idx = torch.where(valid, idx, own)
        return BlockChoice(idx=idx, valid=valid.expand_as(idx), rows=rows)

    # -- the block-level choice (block-sparse kernels) ------------------------------------------------------

    def select_blocks(self, x: torch.Tensor, n_keep: int, per_block: bool = False,
                      chunk: int | None = None) -> BlockChoice:
        """x (B, T, C) -> the n_keep blocks of every query (R = T rows), or with ``per_block`` of every block of
        queries (R = n_q_blocks rows, chosen by each block's first query). ``chunk`` rows are scored at a time
        (None: all at once), so the (B, h, R, nb) scores need not exist whole; the result is the same."""
        T = x.size(1)
        rows = torch.arange(0, T, self.block_size if per_block else 1, device=x.device)
        qi, kb = self.block_index(x, rows if per_block else None)
        step = chunk or len(rows)
        parts = [self.choose(qi[:, :, s:s + step], kb, rows[s:s + step], n_keep)
                 for s in range(0, len(rows), step)]
        return BlockChoice(idx=torch.cat([p.idx for p in parts], 2), valid=torch.cat([p.valid for p in parts], 2),
                           rows=rows)

    # -- the KeySelector API (token level) ------------------------------------------------------------------

    def scores(self, x, q, k):
        """(B, h, T, T): key j's score is its block's; in the query's own block, the prefix-mean score."""
        T = x.size(1)
        qi, kb = self.block_index(x)
        block = qi @ kb.transpose(-2, -1)  # (B, h, T, nb)
        key_block = torch.arange(T, device=x.device) // self.block_size  # (T,)
        tokens = block.index_select(-1, key_block)  # (B, h, T, T)
        own = (qi * self._project(self.wk, self.prefix_means(x))).sum(-1, keepdim=True)  # (B, h, T, 1)
        same = key_block[:, None] == key_block[None, :]  # (T, T): key in the query's own block
        return torch.where(same, own, tokens) / math.sqrt(self.d_index)

    def select(self, x, q, k, top_k):
        """Causal top-K keys, the own block's (earlier) keys first: they score +inf here (not in ``scores``, so
        the KL loss sees finite scores); ties inside a block are broken by top-k's order."""
        key_block = torch.arange(x.size(1), device=x.device) // self.block_size
        same = key_block[:, None] == key_block[None, :]
        return causal_topk(self.scores(x, q, k).masked_fill(same, float("inf")), top_k)
