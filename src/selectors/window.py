"""The sliding window: each query keeps its most recent keys (token level) or, with its own block, the most recent
earlier blocks (block level) -- the baseline every sparse-attention paper reports at equal budget.

Parameter-free: the score of a key is its position (of a key block, its block number), so the causal top-K of
src/sparse/selection.py keeps keys i - K + 1 .. i, and the block choice of src/sparse/choice.py keeps the own block
and the n - 1 blocks just before it. It reads no content, so it predicts no attention mass (no ``hybrid.mass``).
"""

from __future__ import annotations

import torch

from src.costs import formulas as costs
from src.selectors.base import BlockKeySelector, KeySelector
from src.sparse.choice import n_blocks


def positional_cost(T: int, d_model: int, head_dim: int, sizes):
    """The cost of choosing by position: nothing counted (src/costs/formulas.py positional_selector)."""
    return costs.positional_selector()


def positions(B: int, h: int, R: int, n: int, device) -> torch.Tensor:
    """(B, h, R, n): score c for column c -- the later, the better."""
    return torch.arange(n, dtype=torch.float32, device=device).expand(B, h, R, n)


class WindowSelector(KeySelector):
    name = "window"
    trainable = False
    predicts_mass = False

    cost = staticmethod(positional_cost)

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def prepare(self, x, q, k):
        return x.size(0), x.size(1), x.device  # B, T, device: all that the scores read

    def score_rows(self, ctx, rows):
        B, T, device = ctx
        return positions(B, self.n_heads, len(rows), T, device)  # (B, h, R, T)


class BlockWindowSelector(BlockKeySelector):
    name = "block_window"
    trainable = False
    predicts_mass = False

    cost = staticmethod(positional_cost)

    def __init__(self, n_heads: int, block_size: int):
        super().__init__(block_size)
        self.n_heads = n_heads

    def block_scores(self, x, q, k, rows):
        return positions(x.size(0), self.n_heads, len(rows), n_blocks(x.size(1), self.block_size), x.device)
