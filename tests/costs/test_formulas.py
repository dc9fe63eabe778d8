"""The cost formulas (src/costs/formulas.py), each checked by hand or by enumeration."""

from __future__ import annotations

import pytest

from src.costs import formulas as costs
from src.costs.accounting import SELECTORS, ComponentSizes
from src.costs.formulas import Cost
from src.sparse import n_blocks


def test_causal_pairs_by_enumeration():
    for T in (1, 2, 4, 7, 64):
        assert costs.causal_pairs(T) == sum(1 for t in range(T) for s in range(T) if s <= t)
    assert costs.causal_pairs(4) == 10  # 1 + 2 + 3 + 4


def test_causal_block_pairs_by_enumeration():
    # T=4, B=2: queries 0,1 see block 0; queries 2,3 see blocks 0,1 -> 1 + 1 + 2 + 2
    assert costs.causal_block_pairs(4, 2) == 6
    for T, B in ((64, 64), (100, 64), (130, 16), (7, 3)):
        blocks = range(n_blocks(T, B))
        assert costs.causal_block_pairs(T, B) == sum(1 for t in range(T) for b in blocks if b * B <= t)


def test_cost_arithmetic():
    c = Cost(macs=3, ops=4) + Cost(macs=1, ops=1)
    assert c == Cost(4, 5) and c.flops == 2 * 4 + 5
    assert 3 * c == c * 3 == Cost(12, 15)


def test_dense_attention():
    # QK^T: 10 causal pairs x 2 = 20 MACs, PV the same; softmax 5 FLOPs x 10 scores
    c = costs.dense_attention(T=4, hs=2)
    assert c == Cost(macs=40, ops=50) and c.flops == 130
    assert costs.dense_attention(T=4, hs=2, softmax_ops=0) == Cost(40, 0)


def test_mlp_selector():
    # Linear(2 -> 3) on 4 queries: 4*2*3 = 24; Linear(3 -> T=4): 4*3*4 = 48; top-k over 4 candidates x 4 queries
    assert costs.mlp_selector(T=4, hs=2, hidden=3) == Cost(macs=72, ops=16)


def test_indexer_selector():
    # q and k projections from x (4, 8) to 2: 2 * 4*8*2 = 128; causal scores 10 x 2 = 20; top-k over 10 pairs
    assert costs.indexer_selector(T=4, d_model=8, d_index=2) == Cost(macs=148, ops=10)


def test_oracle_selector():
    # causal QK^T only: 10 pairs x 2; top-k over 10 pairs
    assert costs.oracle_selector(T=4, hs=2) == Cost(macs=20, ops=10)


def test_indexed_block_selector_by_hand():
    # T=4, d=3, d_index=2, B=2: 2 query blocks; pooling 4·3 = 12, projections of 2 first queries and 2 block means
    # 2·2·3·2 = 24, (query block, key block) pairs 1 + 2 = 3 -> 3·2
    assert costs.indexed_block_selector(T=4, d_model=3, d_index=2, block=2) == Cost(macs=42, ops=3)
    assert SELECTORS["block"](4, 3, 64, ComponentSizes(d_index=2, block=2)) == Cost(macs=42, ops=3)


def test_block_sparse_pairs_by_enumeration():
    """Each query block reads its own block causally and up to n - 1 earlier blocks: count key by key."""
    for T, B, n in ((8, 2, 1), (8, 2, 2), (10, 4, 2), (64, 16, 3), (50, 16, 10), (7, 3, 2)):
        expected = sum(t % B + 1 + min(n - 1, t // B) * B for t in range(T))  # own block's keys up to t + earlier
        assert costs.block_sparse_pairs(T, B, n) == expected
    assert costs.block_sparse_pairs(16, 4, 4) == costs.causal_pairs(16)  # every block kept: dense causal
    # T=8, B=2, n=2: block 0 has 1 + 2 pairs, blocks 1-3 (1 + 2) + 2·2 each: 3 + 3·7 = 24 pairs
    assert costs.block_softmax_attention(8, 2, 2, 2) == Cost(macs=2 * 2 * 24, ops=5 * 24)


def test_block_selector():
    # mean-pool 4 keys of width 2: 8; scores over 6 causal (query, block) pairs x 2 = 12; top-k over 6
    assert costs.block_selector(T=4, hs=2, block=2) == Cost(macs=20, ops=6)


def test_mlp_approximator():
    # Linear(k*hs = 4 -> 3) on 4 queries: 48; Linear(3 -> 2): 24; no element-wise work counted
    assert costs.mlp_approximator(T=4, hs=2, k=2, hidden=3) == Cost(macs=72, ops=0)


def test_softmax_approximator():
    # scores 4*2*2 = 16, weighted sum 16; softmax 5 x (4 queries x 2 keys)
    assert costs.softmax_approximator(T=4, hs=2, k=2) == Cost(macs=32, ops=40)


def test_rest_of_layer():
    # d=8, T=4: q,k,v,out projections 4 x (4*8*8) = 1024; MLP 4*8*32 + 4*32*8 = 2048
    assert costs.rest_of_layer(d_model=8, T=4) == Cost(macs=3072)


def test_prototype_formulas_by_hand():
    assert costs.prototype_dense_macs(256, 512) == 2 * 256 * 256 * 512
    # selector 256*64*128 + 256*128*256, approximator 256*(8*64)*128 + 256*128*64
    assert costs.prototype_sparse_macs(256) == 2_097_152 + 8_388_608 + 16_777_216 + 2_097_152


def test_decode_flops():
    """Dense decoding does 2·L·d MACs per token; with every key kept, the sparse step does more (the selector);
    the scoring step more than the average step."""
    assert costs.dense_decode(1000, 64, 2).macs == 2 * 1000 * 64
    dense = costs.dense_decode(1024, 64, 2).flops
    assert costs.block_decode(1024, 64, 2, 1024, 16, 8).flops > dense
    assert dense / costs.block_decode(1024, 64, 2, 64, 16, 8).flops > 10
    step = costs.block_decode(1024, 64, 2, 64, 16, 8, scoring_step=True)
    assert step.macs - costs.block_decode(1024, 64, 2, 64, 16, 8).macs == pytest.approx(
        (64 * 2 * 9 + 2 * 64 * 8) * 15 / 16, abs=1)
