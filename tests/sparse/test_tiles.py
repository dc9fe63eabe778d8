"""The tiles kernel (src/sparse/tiles.py): differentiable."""

from __future__ import annotations

import torch

import pytest

from src.sparse import (
    tiled_block_attention,
)
from src.sparse.tiles import tiled_forward
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


@pytest.mark.parametrize("T,bs,n,chunk", [(48, 16, 2, None), (37, 8, 3, 1), (64, 8, 5, 3)])
def test_the_chunked_backward_equals_autograd_through_the_forward(T, bs, n, chunk):
    """TiledBackward (each chunk's tiles gathered again, their gradients added into one buffer) gives autograd's
    gradients of q, k and v through the forward's gathers -- padded last block and partial chunks included."""
    _, q, k, v = qkv(2, T)
    choice = random_choice(2, T, bs, n)
    grad = torch.randn_like(q)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    out = tiled_block_attention(*mine, choice, chunk)
    torch.testing.assert_close(out, tiled_forward(*ref, choice, chunk), atol=1e-6, rtol=1e-6)
    ours = torch.autograd.grad(out, mine, grad)
    theirs = torch.autograd.grad(tiled_forward(*ref, choice, chunk), ref, grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
