"""Selection and approximation metrics (src/metrics.py), by hand."""

from __future__ import annotations

import pytest
import torch

from src.metrics import PerHeadRatio, approximation_stats, selection_stats
from src.sparse import Selection, causal_topk


def probs_3() -> torch.Tensor:
    """(1, 1, 3, 3) causal attention: query 0 on key 0; query 1 0.3/0.7; query 2 0.5/0.1/0.4."""
    return torch.tensor([[[[1.0, 0, 0], [0.3, 0.7, 0], [0.5, 0.1, 0.4]]]])


def ratio(stats: dict, name: str) -> float:
    num, den = stats[name]
    return float(num[0] / den[0])


def test_selection_stats_by_hand():
    # K = 1 per query: query 0 -> key 0 (right), query 1 -> key 0 (wrong: 0.7 is on key 1), query 2 -> key 0 (right)
    sel = Selection(idx=torch.tensor([[[[0], [0], [0]]]]), valid=torch.ones(1, 1, 3, 1, dtype=torch.bool))
    stats = selection_stats(sel, probs_3())
    assert abs(ratio(stats, "top1_acc") - 2 / 3) < 1e-6
    assert abs(ratio(stats, "recall") - 2 / 3) < 1e-6
    assert abs(ratio(stats, "mass_recall") - (1.0 + 0.3 + 0.5) / 3) < 1e-6
    assert abs(ratio(stats, "density") - (1 / 3)) < 1e-6


def test_unranked_top1_asks_whether_the_argmax_was_kept():
    # two keys per query (blocks: unordered); query 1 keeps keys 0 and 1, so its argmax (key 1) is in
    sel = Selection(idx=torch.tensor([[[[0, 0], [0, 1], [2, 1]]]]),
                    valid=torch.tensor([[[[True, False], [True, True], [True, True]]]]))
    ranked, unranked = selection_stats(sel, probs_3()), selection_stats(sel, probs_3(), ranked=False)
    # ranked: only query 0's first slot is its argmax (query 1 ranks key 0 first, query 2 key 2)
    assert abs(ratio(ranked, "top1_acc") - 1 / 3) < 1e-6
    assert abs(ratio(unranked, "top1_acc") - 2 / 3) < 1e-6  # queries 0 and 1 keep their argmax; query 2 does not
    assert abs(ratio(ranked, "mass_recall") - (1.0 + 1.0 + 0.5) / 3) < 1e-6
    assert abs(ratio(ranked, "density") - (1 / 3 + 2 / 3 + 2 / 3) / 3) < 1e-6


def test_approximation_stats_and_per_head_ratio():
    target = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]])  # (1, 2 heads, 1, 2)
    pred = torch.tensor([[[[3.0, 4.0]], [[0.0, 0.0]]]])
    stats = approximation_stats(pred, target)
    metric = PerHeadRatio(2, sqrt=True)
    metric.update(*stats["approx_rel_err"])
    assert torch.allclose(metric.compute(), torch.tensor([0.0, 1.0]))  # exact head; head predicting zero: 100 %
    mse = PerHeadRatio(2)
    mse.update(*stats["approx_mse"])
    mse.update(*stats["approx_mse"])  # accumulates over batches: the same ratio
    assert torch.allclose(mse.compute(), torch.tensor([0.0, 0.5]))


def test_selection_metrics_of_the_oracle():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 10, 10).tril().clamp_min(1e-6).tril()
    probs = probs / probs.sum(-1, keepdim=True)
    for k in (1, 4, 10):
        stats = selection_stats(causal_topk(probs, k), probs)
        for name in ("top1_acc", "recall"):
            num, den = stats[name]
            torch.testing.assert_close(num / den, torch.ones(3))
        mass = stats["mass_recall"][0] / stats["mass_recall"][1]
        assert torch.all(mass <= 1 + 1e-6) and (k < 10 or torch.allclose(mass, torch.ones(3)))


def test_selection_metrics_by_hand():
    probs = torch.tensor([[1.0, 0, 0], [0.3, 0.7, 0], [0.5, 0.1, 0.4]])[None, None]
    sel = causal_topk(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1.0]])[None, None], 2)
    stats = {k: float(n / d) for k, (n, d) in selection_stats(sel, probs).items()}
    # query 0: key 0 (all mass); query 1: keys 0, 1 (all); query 2: keys 2, then 0 or 1 (tie at 0)
    # top-1: query 0 right; query 1 picks key 0 first, the teacher key 1; query 2 picks key 2, the teacher key 0
    assert stats["top1_acc"] == pytest.approx(1 / 3)
    assert stats["recall"] == pytest.approx((1 + 1 + (1 if sel.idx[0, 0, 2, 1] == 0 else 0.5)) / 3)
    assert stats["mass_recall"] == pytest.approx((1 + 1 + 0.4 + (0.5 if sel.idx[0, 0, 2, 1] == 0 else 0.1)) / 3)
