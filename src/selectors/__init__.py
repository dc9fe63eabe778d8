"""Key selectors (Hydra group ``selector/``): one file each. ``build_selector`` makes one from its config."""

from __future__ import annotations

from src.selectors.base import BlockKeySelector, KeySelector
from src.selectors.block import BlockSelector
from src.selectors.indexer import IndexerSelector
from src.selectors.mlp import MLPSelector
from src.selectors.oracle import OracleSelector

SELECTORS = {"mlp": MLPSelector, "indexer": IndexerSelector, "oracle": OracleSelector, "block": BlockSelector}


def build_selector(name: str, n_heads: int, d_model: int, head_dim: int, seq_len: int, hidden: int,
                   d_index: int, block_size: int) -> KeySelector | BlockKeySelector:
    """One selector serving ``n_heads`` heads; the sizes come from conf/selector/*.yaml (src/config.py)."""
    if name == "mlp":
        return MLPSelector(n_heads, head_dim, seq_len, hidden)
    if name == "indexer":
        return IndexerSelector(n_heads, d_model, d_index)
    if name == "oracle":
        return OracleSelector()
    if name == "block":
        return BlockSelector(n_heads, d_model, d_index, block_size)
    raise ValueError(f"selector.name={name!r} is unknown: use one of {', '.join(SELECTORS)}")


__all__ = ["BlockKeySelector", "BlockSelector", "KeySelector", "SELECTORS", "build_selector"]
