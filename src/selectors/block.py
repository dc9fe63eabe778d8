"""A content-based *block* selector in the spirit of MoBA and SeerAttention: whole blocks of keys, chosen once per
block of queries, so that a block-sparse kernel (src/sparse/flex.py, tiles.py) can run the choice.

Keys and queries are grouped in blocks of ``block_size`` consecutive positions (conf/selector/block.yaml; the last
block may be shorter). Per served head, small learned projections of the layer input give index vectors of width
d_index (as src/selectors/indexer.py): a key block is represented by the index key of its mean input (the
projection is linear, so that is the mean of its keys' index keys, for 1/block_size of the work), a block of
queries by the index query of its *first* query. Score(query block r, key block c) = q_first(r) · k_mean(c) /
sqrt(d_index) + a learned bias of the distance r - c in blocks (src/selectors/distance.py), Θ((T/block_size)² ·
d_index) per head, against the indexer's Θ(T² · d_index).

The own block is always kept (as MoBA's current block), and the ``recent`` blocks just before it (``selector.recent``,
NSA's sliding-window branch: the first queries of a block then always see their immediate past); the best earlier
blocks fill the rest of the budget (src/sparse/choice.py). Its share of the attention, which the dynamic budget
(``hybrid.mass``) needs, gets a score of its own: a learned linear function of the first query's input (one number
per head), since the block's mean would read keys after that query.

Causality: the blocks before a query block lie wholly in the past of each of its queries, and the scores read only
their inputs and the block's first query, so no query's output can depend on a later token.

Generation (src/sparse/decode.py): the summaries of the key blocks are the sums of their index keys (the mean index
key once the block is complete: d_index numbers per block and head, MoBA's and SeerAttention-R's compressed key
cache), kept up to date one token at a time; a query block's choice is made when its first query arrives.

Distillation (src/stages/distill_selector.py): the teacher's attention mass per key block, summed over the block's
queries (src/sparse/mass.py; SeerAttention's block-level target, computed chunk by chunk), against the softmax of
the scores: KL over the earlier blocks (which to read) plus KL of the own block's share (how much the rest holds).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.costs import formulas as costs
from src.selectors.base import BlockKeySelector
from src.selectors.distance import DistanceBias
from src.selectors.indexer import index_vectors
from src.sparse.choice import n_blocks


class BlockSelector(BlockKeySelector):
    name = "block"

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Scoring every query block of one head, Θ((T/B)²·d_index) (src/costs/formulas.py indexed_block_selector)."""
        return costs.indexed_block_selector(T, d_model, sizes.d_index, sizes.block, sizes.topk_ops)

    def __init__(self, n_heads: int, d_model: int, d_index: int, block_size: int, recent: int = 0):
        super().__init__(block_size, recent)
        self.n_heads, self.d_index = n_heads, d_index
        self.wq = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.wk = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.own = nn.Linear(d_model, n_heads)  # the own block's score, from the block's first query
        self.distance = DistanceBias(n_heads)

    def block_means(self, t: torch.Tensor) -> torch.Tensor:
        """(..., T, d) -> the mean of every block (..., nb, d); the last block over its own rows only."""
        T, bs = t.size(-2), self.block_size
        nb = n_blocks(T, bs)
        if T % bs == 0:
            return t.unflatten(-2, (nb, bs)).mean(-2)
        count = (T - torch.arange(nb, device=t.device) * bs).clamp(max=bs)
        blocks = F.pad(t, (0, 0, 0, nb * bs - T)).unflatten(-2, (nb, bs))  # zero-padded at the end
        return blocks.sum(-2) / count[:, None]

    def block_scores(self, x, q, k, rows):
        first = x[:, rows * self.block_size]  # (B, R, C): the first query of each query block
        qi = index_vectors(self.wq, first, self.n_heads, self.d_index)  # (B, h, R, d)
        kb = index_vectors(self.wk, self.block_means(x), self.n_heads, self.d_index)  # (B, h, nb, d)
        scores = qi @ kb.transpose(-2, -1) / math.sqrt(self.d_index) + self.distance(rows, kb.size(-2))  # (B,h,R,nb)
        own = self.own(first).transpose(1, 2)[..., None].to(scores.dtype)  # (B, h, R, 1); autocast: bf16
        B, h, R, _ = scores.shape
        return scores.scatter(-1, rows.view(1, 1, R, 1).expand(B, h, R, 1), own)

    # ------------------------------------------------------------------ generation: the compressed key cache

    def summarise(self, x: torch.Tensor, max_len: int) -> torch.Tensor:
        """The prompt's layer input x (B, T0, C) -> per key block the mean of its index keys once it is complete, the
        sum of those so far while it is not, in a buffer for ``max_len`` positions (B, h, n_blocks(max_len),
        d_index); blocks not begun are zero."""
        B, T0, _ = x.shape
        bs, nb = self.block_size, n_blocks(T0, self.block_size)
        ki = index_vectors(self.wk, x, self.n_heads, self.d_index)  # (B, h, T0, d)
        summaries = ki.new_zeros(B, self.n_heads, n_blocks(max_len, bs), self.d_index)
        summaries[:, :, :nb] = F.pad(ki, (0, 0, 0, nb * bs - T0)).unflatten(-2, (nb, bs)).sum(-2)
        summaries[:, :, :T0 // bs] /= bs
        return summaries

    def add_summary(self, summaries: torch.Tensor, x_t: torch.Tensor, t: int) -> None:
        """Add the token at position t (x_t (B, 1, C)) to its block's summary; the block's last makes it a mean."""
        blk = t // self.block_size
        summaries[:, :, blk] += index_vectors(self.wk, x_t, self.n_heads, self.d_index)[:, :, 0]
        if t % self.block_size == self.block_size - 1:
            summaries[:, :, blk] /= self.block_size

    def summary_scores(self, summaries: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The scores of block_scores for the query block whose first query x_t (B, 1, C) is at position t, from the
        completed blocks' mean index keys -> (B, h, 1, r + 1), r = t // block_size (the own block's score last)."""
        r = t // self.block_size
        qi = index_vectors(self.wq, x_t, self.n_heads, self.d_index)  # (B, h, 1, d)
        scores = qi @ summaries[:, :, :r].transpose(-2, -1) / math.sqrt(self.d_index)  # (B, h, 1, r)
        scores = scores + self.distance.before(r)[:, None]
        return torch.cat((scores, self.own(x_t).transpose(1, 2)[..., None]), dim=-1)
