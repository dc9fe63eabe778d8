"""Quest's per-query bound (src/selectors/quest.py): a block's bound is at least every logit of its keys, equal to it
for a block of one key, and a needle key among many others lifts its block where the mean key does not."""

from __future__ import annotations

import math

import torch

from src.costs import formulas as costs
from src.selectors import build_selector
from src.selectors.quest import key_bounds


def test_the_bound_holds_every_key_of_the_block():
    torch.manual_seed(0)
    T, bs = 61, 8  # the last block short
    quest = build_selector("quest", 2, 32, 16, T, block_size=bs)
    q, k = torch.randn(1, 2, T, 16), torch.randn(1, 2, T, 16)
    scores = quest.block_rows(quest.prepare(torch.zeros(1, T, 32), q, k), torch.arange(T))
    logits = q @ k.transpose(-2, -1) / 4
    for t in range(bs, T):
        for b in range(t // bs):
            assert torch.all(scores[0, :, t, b] >= logits[0, :, t, b * bs:(b + 1) * bs].amax(-1) - 1e-5)
    kmax, kmin = key_bounds(k, bs)
    assert torch.equal(kmax[..., -1, :], k[..., 56:, :].amax(2))  # the short last block: its own rows only
    assert torch.equal(kmin[..., -1, :], k[..., 56:, :].amin(2))
    ones = build_selector("quest", 2, 32, 16, T, block_size=1)  # one key per block: the bound is the logit
    torch.testing.assert_close(ones.block_rows(ones.prepare(None, q, k), torch.tensor([60]))[..., :60],
                               logits[:, :, 60:61, :60])


def test_one_matching_key_lifts_its_block_where_the_mean_does_not():
    """A needle: one key that matches the query among 63 that do not, and a block whose every key matches a little.
    Quest keeps the needle's block; MoBA's mean key (query_moba) the other."""
    torch.manual_seed(1)
    T, bs, hs = 512, 64, 16
    k = torch.randn(1, 1, T, hs) * 0.1  # the other keys small against the needle (as the q-k match of a real one)
    q = torch.zeros(1, 1, T, hs)
    q[..., -1, :] = 4 * torch.nn.functional.normalize(torch.randn(hs), dim=0)
    k[..., 100, :] = q[0, 0, -1] / 2  # the needle, in block 1: one logit of 2
    k[..., 320:384, :] += q[0, 0, -1] / 16  # block 5: every key a little like the query (logits of 0.25)
    x = torch.zeros(1, T, 8)
    quest = build_selector("quest", 1, 8, hs, T, block_size=bs).choose(x, q, k, 2)
    moba = build_selector("query_moba", 1, 8, hs, T, block_size=bs).choose(x, q, k, 2)
    picked = lambda c: set(c.idx[0, 0, -1][c.valid[0, 0, -1]].tolist())  # noqa: E731
    assert picked(quest) == {7, 1} and picked(moba) == {7, 5}


def test_cost_is_twice_the_mean_keys_scores():
    T, bs, hs = 2048, 64, 32
    assert costs.quest_gate(T, hs, bs).macs == 2 * T * hs + 2 * costs.causal_block_pairs(T, bs) * hs
    assert math.isclose(costs.quest_gate(T, hs, bs).macs / costs.moba_gate(T, hs, bs, per_query=True).macs, 2,
                        rel_tol=0.05)
