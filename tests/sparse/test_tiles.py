"""The tiles kernel (src/sparse/tiles.py): differentiable."""

from __future__ import annotations

import torch

from src.sparse import (
    tiled_block_attention,
)
from tests.helpers import exact_on_choice, qkv, random_choice


def test_tiles_train_through():
    """The tiles kernel has a gradient (a CPU user can fine-tune through the block-sparse path)."""
    _, q, k, v = qkv(1, 48)
    q.requires_grad_(True)
    choice = random_choice(1, 48, 16, 2)
    tiled_block_attention(q, k, v, choice).sum().backward()
    ref_q = q.detach().clone().requires_grad_(True)
    exact_on_choice(ref_q, k, v, choice).sum().backward()
    torch.testing.assert_close(q.grad, ref_q.grad, atol=1e-5, rtol=1e-5)
