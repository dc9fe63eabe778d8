"""The oracles: the teacher's own attention, the upper bound of selection at each level. Nothing to train.

* ``oracle`` (token level): the teacher's attention scores q · k / sqrt(hs), so its causal top-K is the teacher's
  exact top-K keys of each query; it costs as much as full attention's Q K^T, and it is causal (query i reads keys
  0..i only).
* ``block_oracle`` (block level): per block of queries, the teacher's attention mass on each key block, summed over
  the block's queries (src/sparse/mass.py) -- the best a one-choice-per-query-block selector can do, and the target
  the learned ``block`` selector is distilled towards. It reads every query of the block, so the choice for a
  query depends on the later queries of its block: an upper bound to measure against, not a causal model.
* ``query_block_oracle`` (block level, per query): each query's own attention mass on each key block, its own block
  and the best earlier ones kept -- the best the per-query ``query_block`` selector can do, and its distillation
  target. Causal: a query's mass reads its own row of the teacher's attention, keys up to itself.

Their scores are log attention (mass), so the softmax over a query's candidates is the teacher's own share of each:
what ``hybrid.mass`` reads.
"""

from __future__ import annotations

import math

import torch

from src.costs import formulas as costs
from src.selectors.base import BlockKeySelector, KeySelector
from src.selectors.query_block import QueryBlockSelector, check_blocks
from src.sparse.mass import block_attention_mass, key_block_mass


class OracleSelector(KeySelector):
    name = "oracle"
    trainable = False

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """The teacher's own QK^T for one head (src/costs/formulas.py oracle_selector)."""
        return costs.oracle_selector(T, head_dim, sizes.topk_ops)

    def prepare(self, x, q, k):
        return q, k

    def score_rows(self, ctx, rows):
        q, k = ctx
        return q[:, :, rows] @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, R, T): softmax is monotone


class BlockOracleSelector(BlockKeySelector):
    name = "block_oracle"
    trainable = False
    causal = False  # a query block's choice reads all of its queries

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """The teacher's QK^T for one head, pooled per block (src/costs/formulas.py oracle_selector)."""
        return costs.oracle_selector(T, head_dim, sizes.topk_ops)

    def block_scores(self, x, q, k, rows):
        mass = block_attention_mass(q, k, self.block_size)[:, :, rows]  # (B, h, R, nb); zero after the own block
        return mass.clamp_min(1e-30).log()


class QueryBlockOracleSelector(QueryBlockSelector):
    name = "query_block_oracle"
    trainable = False

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """The teacher's QK^T for one head, pooled per key block (src/costs/formulas.py oracle_selector)."""
        return costs.oracle_selector(T, head_dim, sizes.topk_ops)

    def __init__(self, block_size: int, recent: int = 0):  # no weights
        KeySelector.__init__(self)
        self.block_size, self.recent, self.pieces = check_blocks(block_size, recent)

    def prepare(self, x, q, k):
        return x, q, k

    def block_rows(self, ctx, rows, upto=None):
        """Log of each query's attention mass per key block (B, h, R, nb): its own block's up to itself, later
        blocks' zero (every block, whatever ``upto``: the mass needs every key)."""
        _, q, k = ctx
        scores = q[:, :, rows] @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, R, T)
        probs = scores.masked_fill(torch.arange(k.size(-2), device=q.device) > rows[:, None], float("-inf")).softmax(-1)
        return key_block_mass(probs, self.block_size).clamp_min(1e-30).log()
