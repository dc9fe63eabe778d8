"""StreamingLLM's pattern: the first ``sinks`` keys ("attention sinks", 4 in the paper) plus the most recent keys
(token level); at block level, the blocks holding those first keys plus the own block and the most recent earlier
blocks. A budget of K keys keeps min(sinks, K) sinks and fills the rest with the window.

Parameter-free, as src/selectors/window.py: the score of a key is its position, raised above every other key's
when it is a sink, so the causal top-K keeps the sinks first (the earliest first) and then the latest keys.
"""

from __future__ import annotations

import torch

from src.selectors.base import BlockKeySelector, KeySelector
from src.selectors.window import positional_cost, positions
from src.sparse.choice import n_blocks


def with_sinks(scores, sinks: int):
    """(..., n) position scores -> the first ``sinks`` columns above all others, the earliest first (so a budget
    smaller than ``sinks`` keeps the first keys); the rest keep their order, the latest first."""
    n = scores.size(-1)
    return torch.where(scores < sinks, 2 * n - scores, scores)


class SinkWindowSelector(KeySelector):
    name = "sink_window"
    trainable = False
    predicts_mass = False

    cost = staticmethod(positional_cost)

    def __init__(self, n_heads: int, sinks: int):
        super().__init__()
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"selector.sinks={sinks} must be a number of keys, 0 or more (StreamingLLM uses 4)")
        self.n_heads, self.sinks = n_heads, sinks

    def prepare(self, x, q, k):
        return x.size(0), x.size(1), x.device

    def score_rows(self, ctx, rows):
        B, T, device = ctx
        return with_sinks(positions(B, self.n_heads, len(rows), T, device), self.sinks)


class BlockSinkWindowSelector(BlockKeySelector):
    name = "block_sink_window"
    trainable = False
    predicts_mass = False

    cost = staticmethod(positional_cost)

    def __init__(self, n_heads: int, block_size: int, sinks: int):
        super().__init__(block_size)
        SinkWindowSelector(n_heads, sinks)  # the same check of ``sinks``
        self.n_heads, self.sink_blocks = n_heads, n_blocks(sinks, block_size)  # the blocks holding the sink keys

    def block_scores(self, x, q, k, rows):
        nb = n_blocks(x.size(1), self.block_size)
        return with_sinks(positions(x.size(0), self.n_heads, len(rows), nb, x.device), self.sink_blocks)
