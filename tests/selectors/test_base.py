"""The selector registry (src/selectors/__init__.py, base.py): a new selector registers and builds; every selector gets the settings it asks for."""

from __future__ import annotations

import pytest
import torch

from src.hybrid import HybridSpec, SparseParts
from src.model import GPTConfig
from src.selectors import SELECTORS, build_selector
from src.selectors.base import KeySelector
from src.sparse import causal_topk


@pytest.fixture
def dilated():
    """The README's example, defined here (registered on definition, removed afterwards)."""

    class DilatedSelector(KeySelector):
        """Keys at even distances before the query, the nearest first: a dilated window."""

        name = "dilated_example"
        trainable = False
        predicts_mass = False

        def __init__(self, n_heads: int):
            super().__init__()
            self.n_heads = n_heads

        def prepare(self, x, q, k):
            return x.size(0), x.size(1), x.device

        def score_rows(self, ctx, rows):
            B, T, device = ctx
            dist = rows[:, None] - torch.arange(T, device=device)  # (R, T)
            score = torch.where(dist % 2 == 0, -dist.float(), -2.0 * T)  # even distances, the nearest first
            return score.expand(B, self.n_heads, -1, -1)

    yield DilatedSelector
    SELECTORS.pop("dilated_example")


def test_a_new_selector_registers_and_builds(dilated):
    assert SELECTORS["dilated_example"] is dilated
    sel = build_selector("dilated_example", 2, 16, 8, 12, hidden=99, d_index=3)  # settings it does not ask for: ignored
    assert isinstance(sel, dilated) and sel.n_heads == 2
    picked = causal_topk(sel.scores(torch.zeros(1, 12, 16), None, None), 3).idx[0, 0]
    assert picked[11].tolist() == [11, 9, 7] and picked[4].tolist() == [4, 2, 0]
    cfg = GPTConfig(vocab_size=5, seq_len=12, n_layer=1, n_head=2, d_model=16)
    parts = SparseParts(HybridSpec.from_config(cfg, heads="all", budget=3), cfg, {"name": "dilated_example"},
                        {"name": "softmax"})
    assert isinstance(parts.selectors["0"], dilated)


def test_every_selector_gets_the_settings_it_asks_for():
    block = build_selector("block", 2, 16, 8, 32, d_index=5, block_size=4, recent=1)
    assert (block.d_index, block.block_size, block.recent) == (5, 4, 1)
    assert build_selector("sink_window", 2, 16, 8, 32, sinks=3).sinks == 3
    assert build_selector("mlp", 2, 16, 8, 32, hidden=7).w1.shape == (2, 8, 7)
    from src.config import SelectorConf

    assert build_selector("indexer", 2, 16, 8, 32).d_index == SelectorConf.d_index  # unset: src/config.py's default


def test_unknown_and_twice_named_selectors():
    with pytest.raises(ValueError, match="selector.name='nope' is unknown: use one of indexer, block"):
        build_selector("nope", 1, 8, 4, 8)
    with pytest.raises(TypeError, match="two selectors are named 'window'"):
        class Again(KeySelector):
            name = "window"
