"""The gather path (src/sparse/gather.py): each query's selected keys and values."""

from __future__ import annotations

import torch

from src.sparse import (
    gather_rows,
)


def test_gather_rows():
    t = torch.arange(2 * 1 * 5 * 3, dtype=torch.float).view(2, 1, 5, 3)
    idx = torch.tensor([[[[0, 0], [1, 0], [2, 1], [3, 0], [4, 2]]]]).expand(2, 1, 5, 2)
    g = gather_rows(t, idx)
    assert g.shape == (2, 1, 5, 2, 3)
    assert torch.equal(g[1, 0, 4, 1], t[1, 0, 2]) and torch.equal(g[0, 0, 2, 0], t[0, 0, 2])
    by_gather = torch.gather(t[:, :, None].expand(-1, -1, 5, -1, -1), 3, idx[..., None].expand(-1, -1, -1, -1, 3))
    assert torch.equal(g, by_gather)
