"""The selector registry (src/selectors/__init__.py, base.py): every selector gets the settings it asks for; unknown and
twice-used names are refused. (A new selector registering and building: the README's own, tests/test_readme.py.)"""

from __future__ import annotations

import pytest

from src.selectors import build_selector
from src.selectors.base import KeySelector


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
