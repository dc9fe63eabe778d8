"""A learned bias on how far back a key (block) lies, added to the content scores of the indexer and the block
selector: position-aware selection without reading positions from the input.

With rotary positions (``model.pos=rope``) the layer input holds no position at all, so a selector that scores
content alone cannot prefer recent keys, which carry most of the attention of a language model; with learned
positions it must find them in the input. One number per head and distance bucket -- bucket 0 for distance 0,
then one per power of two (1, 2-3, 4-7, ...; T5's log buckets, without the exact ones) -- is learned with the
rest of the selector, starts at 0 (pure content) and works at any length.
"""

from __future__ import annotations

import torch
import torch.nn as nn

N_BUCKETS = 16  # distances up to 2^15 apart get their own bucket; farther ones share the last


def distance_bucket(d: torch.Tensor) -> torch.Tensor:
    """Distances (>= 0, integer) -> bucket 0 for 0, b for 2^(b-1) <= d < 2^b, at most N_BUCKETS - 1."""
    d = d.clamp_min(0)
    return torch.where(d > 0, torch.log2(d.clamp_min(1).float()).floor().long() + 1, 0).clamp(max=N_BUCKETS - 1)


class DistanceBias(nn.Module):
    def __init__(self, n_heads: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_heads, N_BUCKETS))

    def forward(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """The bias of positions 0..n-1 for the rows ``rows`` (R,) (queries or query blocks) -> (h, R, n); later
        positions (negative distances) get bucket 0, and are never selected anyway."""
        return self.bias[:, distance_bucket(rows[:, None] - torch.arange(n, device=rows.device))]

    def before(self, r: int) -> torch.Tensor:
        """The bias of positions 0..r-1 seen from position r, (h, r): ``forward([r], r)[:, 0]`` in two steps
        (generation asks for one row at a time)."""
        table = getattr(self, "_buckets", None)
        if table is None or table.numel() <= r or table.device != self.bias.device:
            n = max(2 * r + 2, 1024)  # buckets of distances 0..n-1, grown by doubling
            table = self._buckets = distance_bucket(torch.arange(n, device=self.bias.device))
        return self.bias[:, table[1:r + 1].flip(0)]
