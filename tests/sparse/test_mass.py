"""The teacher's attention mass per key block (src/sparse/mass.py), computed chunk by chunk."""

from __future__ import annotations

import pytest
import torch

from src.model import causal_attention_probs
from src.sparse import (
    block_attention_mass,
    n_blocks,
)
from tests.helpers import H, qkv


@pytest.mark.parametrize("T,bs,chunk", [(32, 8, 1024), (30, 8, 16), (29, 4, 5)])
def test_block_attention_mass(T, bs, chunk):
    """Equal to the materialised probabilities pooled per (query block, key block), whatever the chunk."""
    _, q, k, _ = qkv(2, T)
    probs = causal_attention_probs(q, k)  # (B, h, T, T)
    nb = n_blocks(T, bs)
    pad = nb * bs - T
    pooled = torch.nn.functional.pad(probs, (0, pad, 0, pad)).view(2, H, nb, bs, nb, bs).sum((3, 5))
    mass = block_attention_mass(q, k, bs, chunk)
    torch.testing.assert_close(mass, pooled)
    rows = torch.clamp(T - torch.arange(nb) * bs, max=bs).float()
    torch.testing.assert_close(mass.sum(-1), rows.expand(2, H, nb))  # each query's probabilities sum to 1
    assert torch.all(mass.triu(1) == 0)  # no mass on later blocks
