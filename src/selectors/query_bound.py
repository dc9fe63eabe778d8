"""The per-query gate with Quest's bound on *learned* index keys: ``query_block`` scores a query against each earlier
block's *mean* index key, in which one needle among 63 other keys barely shows; Quest (src/selectors/quest.py) bounds
each block by the per-channel largest and smallest of the head's own keys, which rises with any one key that matches
but reads raw keys that were never trained to be told apart. Here the index keys are learned, as ``query_block``'s
(d_index-wide projections of the layer input, at every position), and a block scores the bound

    sum_c max(q_c * kmax_c, q_c * kmin_c)    (kmax, kmin: the block's largest and smallest index key per channel)

plus the learned distance bias; the own block and the best earlier ones are kept, as ``query_block`` does, and it is
distilled the same way (KL to the teacher's attention mass per key block, query by query). Causal: a block's bound
reads only its own keys, and a query may pick only blocks wholly before its own. Θ(T · d · d_index) for the index
keys at every position (``query_block`` projects the block means only) + twice ``query_block``'s scoring.
"""

from __future__ import annotations

import math

import torch

from src.costs import formulas as costs
from src.selectors.indexer import index_vectors
from src.selectors.query_block import QueryBlockSelector
from src.selectors.quest import bound_scores, key_bounds


class QueryBoundSelector(QueryBlockSelector):
    name = "query_bound"

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Index queries and keys at every position, the bounds, every query's two scores (src/costs/formulas.py
        query_bound_selector)."""
        return costs.query_bound_selector(T, d_model, sizes.d_index, sizes.block, sizes.topk_ops)

    def __init__(self, n_heads: int, d_model: int, d_index: int, block_size: int, recent: int = 0):
        super().__init__(n_heads, d_model, d_index, block_size, recent)  # a block's bound: no pieces

    def prepare(self, x, q, k):
        """The inputs (B, T, C), every position's index query (B, h, T, d) and every block's per-channel largest
        and smallest index key (B, h, nb, d) each."""
        return (x, index_vectors(self.wq, x, self.n_heads, self.d_index),
                *key_bounds(index_vectors(self.wk, x, self.n_heads, self.d_index), self.block_size))

    def block_rows(self, ctx, rows: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The bound of every key block (the first ``upto``) for the queries at positions ``rows`` (R,) -> (B, h, R,
        nb), with the distance bias; the own block's column holds the own block's score."""
        x, qi, kmax, kmin = ctx
        scores = bound_scores(qi[:, :, rows], kmax, kmin, upto)
        return self.finish_rows(scores.div_(math.sqrt(self.d_index)), x, rows)
