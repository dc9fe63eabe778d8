"""The oracles (src/selectors/oracle.py): the teacher's own top keys and top key blocks."""

from __future__ import annotations

import math

import torch

from src.model import GPTConfig
from src.selectors import build_selector
from tests.helpers import chosen_blocks

CFG = GPTConfig(vocab_size=19, seq_len=32, n_layer=2, n_head=2, d_model=16)


def test_block_oracle_picks_the_top_blocks_of_a_hand_built_map():
    """Keys of block c point in direction c; the queries of block r point (strongly) at one chosen earlier block."""
    bs, nb, hs = 4, 6, 8
    k = torch.zeros(1, 1, nb * bs, hs)
    for c in range(nb):
        k[..., c * bs:(c + 1) * bs, c] = 1.0
    target = {2: 0, 3: 1, 4: 1, 5: 3}  # query block -> the earlier block its queries attend to
    q = torch.zeros(1, 1, nb * bs, hs)
    for r, c in target.items():
        q[..., r * bs:(r + 1) * bs, c] = 20.0
    oracle = build_selector("block_oracle", 1, 16, hs, nb * bs, hidden=8, d_index=4, block_size=bs, sinks=0)
    choice = oracle.choose(torch.zeros(1, nb * bs, 16), q, k, 2)
    for r, c in target.items():
        assert chosen_blocks(choice)[r] == {r, c}


def test_block_oracle_matches_the_pooled_attention():
    torch.manual_seed(3)
    q, k = torch.randn(1, 2, 24, 8) * 3, torch.randn(1, 2, 24, 8) * 3
    probs = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(torch.ones(24, 24, dtype=torch.bool).triu(1),
                                                                 float("-inf")).softmax(-1)
    pooled = probs.view(1, 2, 6, 4, 6, 4).sum((3, 5))  # (B, h, query block, key block)
    oracle = build_selector("block_oracle", 2, 16, 8, 24, hidden=8, d_index=4, block_size=4, sinks=0)
    choice = oracle.choose(torch.zeros(1, 24, 16), q, k, 3)
    for h in range(2):
        for r in range(2, 6):
            earlier = pooled[0, h, r, :r]
            assert chosen_blocks(choice, h=h)[r] == {r, *earlier.topk(2).indices.tolist()}
