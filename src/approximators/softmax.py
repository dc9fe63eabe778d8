"""Exact softmax attention restricted to the selected keys: the reference approximator (no parameters).

With K = T it is full causal attention; with K < T the error comes only from the keys the selector left out.
"""

from __future__ import annotations

import math


from src.approximators.base import Approximator
from src.costs import formulas as costs


class SoftmaxApproximator(Approximator):
    name = "softmax"
    trainable = False
    exact_softmax = True  # a block-sparse kernel (src/sparse/flex.py, tiles.py) may compute it instead

    @staticmethod
    def cost(T: int, head_dim: int, k: int, sizes):
        """One head over k selected keys of every query (src/costs/formulas.py softmax_approximator)."""
        return costs.softmax_approximator(T, head_dim, k, sizes.softmax_ops)

    def forward(self, q, k_sel, v_sel, valid):
        """q (B, h, T, hs); k_sel, v_sel (B, h, T, K, hs); valid (B, h, T, K) -> (B, h, T, hs)."""
        scores = (k_sel @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.size(-1))  # (B, h, T, K)
        weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        return (weights.unsqueeze(-2) @ v_sel).squeeze(-2)  # (B, h, T, hs)
