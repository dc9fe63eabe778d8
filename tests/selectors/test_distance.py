"""The learned distance bias (src/selectors/distance.py)."""

from __future__ import annotations

import torch

from src.selectors.distance import distance_bucket
from tests.helpers import T, chosen_keys, make


def test_distance_buckets():
    d = torch.tensor([0, 1, 2, 3, 4, 7, 8, 100, 10**6])
    assert distance_bucket(d).tolist() == [0, 1, 2, 2, 3, 3, 4, 7, 15]


def test_distance_bias_lets_a_selector_prefer_recent_keys():
    sel = make("indexer")
    for p in sel.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        sel.distance.bias.copy_(-torch.arange(16.0))  # the farther, the lower
    chosen = sel.select(torch.randn(1, T, 16), None, None, 4)
    assert chosen_keys(chosen) == chosen_keys(make("window").select(torch.randn(1, T, 16), None, None, 4))
