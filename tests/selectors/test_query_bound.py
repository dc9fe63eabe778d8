"""The per-query gate with Quest's bound on learned index keys (src/selectors/query_bound.py): the bound holds every
index logit of its block, one matching index key lifts its block where query_block's mean key does not, it learns
by the query_block distillation, and its cost counts the keys at every position."""

from __future__ import annotations

import torch

from src.costs import formulas as costs
from src.selectors import build_selector
from src.selectors.indexer import index_vectors
from src.stages.distill_selector import block_selector_loss


def test_the_bound_holds_every_index_logit_of_the_block():
    torch.manual_seed(0)
    T, bs, d = 61, 8, 8  # the last block short
    sel = build_selector("query_bound", 2, 32, 16, T, block_size=bs, d_index=d)
    x = torch.randn(1, T, 32)
    ctx = sel.prepare(x, None, None)
    scores = sel.block_rows(ctx, torch.arange(T))
    bias = sel.finish_rows(torch.zeros_like(scores), x, torch.arange(T))  # the distance bias (and own column) alone
    qi, ki = index_vectors(sel.wq, x, 2, d), index_vectors(sel.wk, x, 2, d)
    logits = qi @ ki.transpose(-2, -1) / d**0.5
    for t in range(bs, T):
        for b in range(t // bs):
            content = scores[0, :, t, b] - bias[0, :, t, b]
            assert torch.all(content >= logits[0, :, t, b * bs:(b + 1) * bs].amax(-1) - 1e-5)


def test_one_matching_index_key_lifts_its_block_where_the_mean_does_not():
    """The same weights, two poolings: a needle input (one position whose index key matches the last query) among
    63 that do not, and a block whose every input matches a little. The bound keeps the needle's block, the mean
    key (query_block) the other."""
    torch.manual_seed(1)
    T, bs, C = 512, 64, 16
    bound = build_selector("query_bound", 1, C, 16, T, block_size=bs, d_index=C)
    mean = build_selector("query_block", 1, C, 16, T, block_size=bs, d_index=C)
    mean.load_state_dict(bound.state_dict())
    with torch.no_grad():
        for sel in (bound, mean):
            sel.wq.weight.copy_(torch.eye(C)), sel.wk.weight.copy_(torch.eye(C))  # index vectors = the inputs
            sel.distance.requires_grad_(False)
            for p in sel.distance.parameters():
                p.zero_()
    x = torch.randn(1, T, C) * 0.1
    x[0, -1] = 4 * torch.nn.functional.normalize(torch.randn(C), dim=0)
    x[0, 100] = x[0, -1] / 2  # the needle, in block 1
    x[0, 320:384] += x[0, -1] / 16  # block 5: every input a little like the query
    picked = lambda c: set(c.idx[0, 0, -1][c.valid[0, 0, -1]].tolist())  # noqa: E731
    assert picked(bound.choose(x, None, None, 2)) == {7, 1}
    assert picked(mean.choose(x, None, None, 2)) == {7, 5}


def test_it_learns_by_the_query_block_distillation():
    torch.manual_seed(0)
    T, bs = 64, 8
    sel = build_selector("query_bound", 2, 16, 8, T, block_size=bs, d_index=8)
    x = torch.randn(2, T, 16)
    rows = torch.arange(T)
    mass = torch.rand(2, 2, T, T // bs).softmax(-1)
    loss = block_selector_loss(sel.block_rows(sel.prepare(x, None, None), rows), mass, rows // bs)
    loss.backward()
    assert torch.isfinite(loss) and sel.wq.weight.grad.abs().sum() > 0 and sel.wk.weight.grad.abs().sum() > 0


def test_cost_counts_the_index_keys_of_every_position():
    T, d, di, bs = 2048, 128, 16, 64
    bound, mean = costs.query_bound_selector(T, d, di, bs), costs.query_block_selector(T, d, di, bs)
    pairs = costs.causal_block_pairs(T, bs)
    assert bound.macs == 2 * T * d * di + 2 * T * di + 2 * pairs * di
    assert bound.macs > mean.macs and bound.ops == mean.ops
