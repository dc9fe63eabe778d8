"""Key selectors (Hydra group ``selector/``): one file each. ``build_selector`` makes one from its config.

Learned: ``indexer`` (token level, DeepSeek V3.2's lightning indexer), ``block`` (block level, MoBA / SeerAttention),
``mlp`` (the prototype's). Parameter-free, the baselines and the upper bounds at each level: ``window`` /
``block_window`` (the most recent keys), ``sink_window`` / ``block_sink_window`` (StreamingLLM: first keys + window),
``oracle`` / ``block_oracle`` (the teacher's own attention).
"""

from __future__ import annotations

from src.selectors.base import BlockKeySelector, KeySelector
from src.selectors.block import BlockSelector
from src.selectors.indexer import IndexerSelector
from src.selectors.mlp import MLPSelector
from src.selectors.oracle import BlockOracleSelector, OracleSelector
from src.selectors.sink_window import BlockSinkWindowSelector, SinkWindowSelector
from src.selectors.window import BlockWindowSelector, WindowSelector

SELECTORS = {
    "mlp": MLPSelector, "indexer": IndexerSelector, "oracle": OracleSelector, "window": WindowSelector,
    "sink_window": SinkWindowSelector, "block": BlockSelector, "block_oracle": BlockOracleSelector,
    "block_window": BlockWindowSelector, "block_sink_window": BlockSinkWindowSelector,
}

BLOCK_SELECTORS = tuple(name for name, cls in SELECTORS.items() if cls.picks_blocks)  # keep whole blocks of keys


def build_selector(name: str, n_heads: int, d_model: int, head_dim: int, seq_len: int, hidden: int,
                   d_index: int, block_size: int, sinks: int, recent: int = 0) -> KeySelector | BlockKeySelector:
    """One selector serving ``n_heads`` heads; the sizes come from conf/selector/*.yaml (src/config.py)."""
    make = {
        "mlp": lambda: MLPSelector(n_heads, head_dim, seq_len, hidden),
        "indexer": lambda: IndexerSelector(n_heads, d_model, d_index),
        "oracle": lambda: OracleSelector(),
        "window": lambda: WindowSelector(n_heads),
        "sink_window": lambda: SinkWindowSelector(n_heads, sinks),
        "block": lambda: BlockSelector(n_heads, d_model, d_index, block_size, recent),
        "block_oracle": lambda: BlockOracleSelector(block_size),
        "block_window": lambda: BlockWindowSelector(n_heads, block_size),
        "block_sink_window": lambda: BlockSinkWindowSelector(n_heads, block_size, sinks),
    }
    if name not in make:
        raise ValueError(f"selector.name={name!r} is unknown: use one of {', '.join(SELECTORS)}")
    return make[name]()


__all__ = ["BLOCK_SELECTORS", "BlockKeySelector", "BlockSelector", "KeySelector", "SELECTORS", "build_selector"]
