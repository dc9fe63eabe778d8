"""StreamingLLM's pattern: the first ``sinks`` keys ("attention sinks", 4 in the paper) plus the most recent keys
(token level); at block level, the blocks holding those first keys plus the own block and the most recent earlier
blocks. A budget of K keys keeps min(sinks, K) sinks and fills the rest with the window.

Parameter-free, as src/selectors/window.py: the score of a key is its position, raised above every other key's
when it is a sink, so the causal top-K keeps the sinks first (the earliest first) and then the latest keys.
"""

from __future__ import annotations

import torch

from src.selectors.window import BlockWindowSelector, WindowSelector
from src.sparse.choice import n_blocks


def with_sinks(scores, sinks: int):
    """(..., n) position scores -> the first ``sinks`` columns above all others, the earliest first (so a budget
    smaller than ``sinks`` keeps the first keys); the rest keep their order, the latest first."""
    n = scores.size(-1)
    return torch.where(scores < sinks, 2 * n - scores, scores)


def check_sinks(sinks) -> None:
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"selector.sinks={sinks} must be a number of keys, 0 or more (StreamingLLM uses 4)")


class SinkWindowSelector(WindowSelector):
    """The window, with the first ``sinks`` keys kept before it."""

    name = "sink_window"

    def __init__(self, n_heads: int, sinks: int):
        super().__init__(n_heads)
        check_sinks(sinks)
        self.sinks = sinks

    def score_rows(self, ctx, rows):
        return with_sinks(super().score_rows(ctx, rows), self.sinks)


class BlockSinkWindowSelector(BlockWindowSelector):
    """The block window, with the blocks holding the first ``sinks`` keys kept before it."""

    name = "block_sink_window"

    def __init__(self, n_heads: int, block_size: int, sinks: int):
        super().__init__(n_heads, block_size)
        check_sinks(sinks)
        self.sink_blocks = n_blocks(sinks, block_size)  # the blocks holding the sink keys

    def block_scores(self, x, q, k, rows):
        return with_sinks(super().block_scores(x, q, k, rows), self.sink_blocks)
