"""MoBA's parameter-free gate (src/selectors/moba.py): the head's own query against each block's mean key, one choice
per block of queries (``moba``, its first query) or per query (``query_moba``); nothing to learn; its cost."""

from __future__ import annotations

import math

import torch

from src.costs import formulas
from src.selectors import build_selector
from src.selectors.moba import mean_keys


def needles():
    """One head, T = 32 in blocks of 4: block 1's keys point along dimension 0, block 5's along dimension 1; in the
    last block, query 28 (its first) and 29 ask for dimension 0, query 30 for dimension 1."""
    q, k = torch.randn(1, 1, 32, 8) * 0.01, torch.randn(1, 1, 32, 8) * 0.01
    k[0, 0, 4:8, 0] = 10.0
    k[0, 0, 20:24, 1] = 10.0
    q[0, 0, 28, 0] = q[0, 0, 29, 0] = q[0, 0, 30, 1] = 10.0
    return torch.zeros(1, 32, 8), q, k


def kept(selection, t: int) -> list[int]:
    return sorted({int(i) // 4 for i in selection.idx[0, 0, t][selection.valid[0, 0, t]]})


def test_the_first_query_chooses_for_its_block():
    x, q, k = needles()
    gate = build_selector("moba", 1, 8, 8, 32, block_size=4)
    assert not list(gate.parameters()) and not gate.trainable
    choice = gate.choose(x, q, k, 2)  # the own block and the best earlier one
    assert choice.idx[0, 0, 7].tolist() == [7, 1]  # query 28 asks for block 1: its whole block reads it
    s = choice.keys()
    assert kept(s, 29) == [1, 7] and kept(s, 30) == [1, 7]


def test_every_query_chooses_its_own_block():
    """query_moba: query 30 fetches block 5 while its neighbour 29 fetches block 1 (MoBA's rule)."""
    x, q, k = needles()
    gate = build_selector("query_moba", 1, 8, 8, 32, block_size=4)
    assert not list(gate.parameters()) and not gate.trainable
    s = gate.select(x, q, k, 8)
    assert kept(s, 29) == [1, 7] and kept(s, 30) == [5, 7]
    assert gate.choose(x, q, k, 2).idx[0, 0, 30].tolist() == [7, 5]


def test_scores_are_the_query_against_the_mean_key():
    x, q, k = torch.zeros(1, 10, 4), torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4)
    means = mean_keys(k, 4)
    torch.testing.assert_close(means[:, :, 2], k[:, :, 8:10].mean(2))  # the last block over its own rows
    gate = build_selector("query_moba", 2, 4, 4, 10, block_size=4)
    scores = gate.block_rows(gate.prepare(x, q, k), torch.tensor([9]))
    torch.testing.assert_close(scores[..., 0, :2], (q[:, :, 9:10] @ means[:, :, :2].transpose(-2, -1))[..., 0, :] / 2)
    torch.testing.assert_close(scores[..., 0, 2], (q[:, :, 9] * k[:, :, 9]).sum(-1) / math.sqrt(4))  # own: q·k


def test_cost():
    # T = 8, hs = 2, blocks of 4: mean keys 16 MACs; first queries 3 causal block pairs, every query 4·1 + 4·2 = 12
    assert formulas.moba_gate(8, 2, 4, per_query=False) == formulas.Cost(macs=16 + 3 * 2, ops=3)
    assert formulas.moba_gate(8, 2, 4, per_query=True) == formulas.Cost(macs=16 + 12 * 2, ops=12)
