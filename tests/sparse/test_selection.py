"""Token-level selection (src/sparse/selection.py): the causal top-K and the dynamic budget's mass rule."""

from __future__ import annotations

import pytest
import torch

from src.sparse import (
    causal_topk,
    selection_mask,
)
from src.sparse.selection import within_mass


def test_causal_topk_ignores_huge_future_scores():
    scores = torch.zeros(1, 1, 6, 6)
    scores[..., 5] = 1e9  # the last key scores highest for everyone
    sel = causal_topk(scores, 2)
    assert torch.all(sel.idx <= torch.arange(6)[:, None])
    assert sel.idx[0, 0, 5, 0] == 5


@pytest.mark.parametrize("fill", [float("-inf"), float("nan"), -3.4e38])
def test_causal_topk_never_picks_a_future_key_on_ties_with_the_mask(fill):
    """Earlier keys scored -inf (or NaN, or the lowest float) still rank above every masked future key."""
    sel = causal_topk(torch.full((1, 1, 6, 6), fill), 3)
    pos = torch.arange(6)[:, None]
    assert torch.all(sel.idx <= pos)
    assert torch.equal(selection_mask(sel, 6).sum(-1)[0, 0], torch.clamp(torch.arange(6) + 1, max=3))


def test_within_mass_keeps_the_fewest_slots_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    valid = torch.ones(4, dtype=torch.bool)
    kept = {m: within_mass(probs, valid, m).sum().item() for m in (0.4, 0.5, 0.75, 0.8, 0.81, 0.96, 1.0)}
    assert kept == {0.4: 1, 0.5: 1, 0.75: 2, 0.8: 2, 0.81: 3, 0.96: 4, 1.0: 4}
    assert torch.equal(within_mass(probs, valid, None), valid)


def test_dynamic_token_budget_never_exceeds_the_cap():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 16, 16) * 3
    for mass in (0.3, 0.9, 0.999, 1.0):
        for K in (2, 5, 16):
            sel = causal_topk(scores, K, mass=mass)
            fixed = causal_topk(scores, K)
            n = sel.valid.sum(-1)
            assert torch.all(n >= 1) and torch.all(n <= fixed.valid.sum(-1))
            # the kept keys are the best ones of the fixed budget, and they reach the mass unless the cap stops them
            assert torch.all(selection_mask(sel, 16) <= selection_mask(fixed, 16))
            p = scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            held = (p * selection_mask(sel, 16)).sum(-1)
            short = (held < mass - 1e-6) & (n < fixed.valid.sum(-1))
            assert not short.any(), "stopped below the mass while the cap allowed more"
            # fewest: without its last kept key, a query holds less than the mass
            last = torch.where(sel.valid, torch.arange(K), -1).max(-1).values
            p_last = p.gather(-1, sel.idx.gather(-1, last[..., None].clamp_min(0)))[..., 0]
            assert torch.all(held - p_last < mass + 1e-6)


def test_ranking_orders_as_the_scores_and_breaks_ties_by_the_later_position():
    """The top-K of equal scores is the same on every machine and for every batch shape: the later keys first."""
    from src.sparse.selection import ranking

    scores = torch.tensor([[-2.0, 3.0, -0.5, 3.0, float("-inf"), 0.0, float("inf"), -0.5, 1e-30, -1e-30]])
    keys = ranking(scores)
    by_score = sorted(range(10), key=lambda j: (scores[0, j].item(), j), reverse=True)
    assert keys.argsort(descending=True)[0].tolist() == by_score
    tied = torch.zeros(3, 64)  # every key scores the same: the latest win, whatever the batch
    assert causal_topk(tied, 4, torch.tensor([10, 40, 63])).idx[:, :].tolist() == [
        [10, 9, 8, 7], [40, 39, 38, 37], [63, 62, 61, 60]]


@pytest.mark.parametrize("k", [1, 3, 16, 17, 40])
def test_top_ranked_is_topk_of_the_keys(k):
    """The few picks taken one max at a time (k <= AMAX_TOP) are topk's, in its order, ties and infinities included."""
    from src.sparse.selection import ranking, top_ranked

    torch.manual_seed(0)
    scores = torch.randn(3, 5, 48).round(decimals=1)  # many ties
    scores[0, 0, :7] = float("-inf")
    scores[1, 2, 5] = float("inf")
    scores[2, 3, :] = -0.0
    keys = ranking(scores)
    assert torch.equal(top_ranked(keys, k), keys.topk(k, dim=-1).indices)
    assert torch.equal(keys, ranking(scores))  # the keys are left as they were
