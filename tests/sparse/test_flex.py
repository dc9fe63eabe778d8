"""The flex kernel (src/sparse/flex.py, block_mask.py): its block tables, and where it cannot run."""

from __future__ import annotations

import pytest
import torch

from src.sparse import (
    block_mask,
    flex_block_attention,
)
from tests.helpers import block_attention, qkv, random_choice


def test_block_mask_tables():
    choice = random_choice(1, 64, 16, 2, seed=3)
    mask = block_mask(choice)
    assert mask.BLOCK_SIZE == (16, 16) and mask.seq_lengths == (64, 64)
    assert torch.equal(mask.kv_num_blocks[0, 0], torch.ones(4, dtype=torch.int32))  # the own block: partial
    assert torch.equal(mask.kv_indices[0, 0, :, 0], torch.arange(4, dtype=torch.int32))
    assert mask.full_kv_num_blocks[0, 0].tolist() == [0, 1, 1, 1]  # one earlier block each, from block 1 on
    for r in range(1, 4):
        assert mask.full_kv_indices[0, 0, r, 0] == choice.idx[0, 0, r, 1]


def test_block_mask_for_backward_has_the_transposed_tables():
    """The tables FlexAttention's backward pass reads (per key block: the query blocks that read it) agree with the
    choice (the CUDA backward itself cannot run on this CPU-only suite)."""
    choice = random_choice(2, 80, 16, 3, seed=4)
    mask = block_mask(choice, for_backward=True)
    readers = choice.keep().sum(-2)  # (B, h, nb): query blocks reading each key block
    assert torch.equal((mask.q_num_blocks + mask.full_q_num_blocks).long(), readers)
    assert torch.equal(mask.q_num_blocks.long(), torch.ones_like(readers))  # the diagonal: each block's own


def test_flex_where_it_cannot_run():
    from src.sparse import flex_unavailable

    assert "forward only" in flex_unavailable(torch.device("cpu"), needs_grad=True)
    assert "not mps: use hybrid.kernel=tiles" in flex_unavailable(torch.device("mps"), needs_grad=False)
    assert "selector.block_size=48: FlexAttention's CUDA kernel needs blocks of a multiple of 64" in (
        flex_unavailable(torch.device("cuda"), needs_grad=False, block_size=48))
    assert flex_unavailable(torch.device("cuda"), needs_grad=True, block_size=128) is None
    assert flex_unavailable(torch.device("cpu"), needs_grad=False, block_size=5) is None  # any block on a CPU
    assert "multiple of 64" in block_attention("flex", bs=16).problem_on(torch.device("cuda"))
    assert block_attention("tiles", bs=16).problem_on(torch.device("cuda")) is None


def test_flex_refuses_a_gradient_on_the_cpu():
    _, q, k, v = qkv(1, 32)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward only"):
        flex_block_attention(q, k, v, random_choice(1, 32, 16, 1))
