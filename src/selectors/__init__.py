"""Key selectors (Hydra group ``selector/``): one file each, one YAML each (conf/selector/NAME.yaml).

Learned: ``indexer`` (token level, DeepSeek V3.2's lightning indexer), ``block`` (block level, MoBA / SeerAttention:
one choice per block of queries), ``query_block`` (whole key blocks chosen by every query: MoBA's gate) and
``query_bound`` (the same with Quest's bound on its learned index keys), ``mlp`` (the prototype's). Parameter-free,
the baselines and the upper bounds at each level: ``window`` / ``block_window`` (the most recent keys),
``sink_window`` / ``block_sink_window`` (StreamingLLM: first keys + window), ``oracle`` / ``block_oracle`` (the
teacher's own attention).

Adding a selector is one file here -- a subclass of ``KeySelector`` (token level) or ``BlockKeySelector`` (block
level) with a ``name`` -- and one YAML, conf/selector/NAME.yaml: every module of this package is imported below, and
a class with a name registers itself in ``SELECTORS``. ``build_selector`` gives a class the settings its
``__init__`` asks for (by parameter name), so a new setting is one field in src/config.py's SelectorConf.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from src.config import selector_settings
from src.selectors.base import SELECTORS, BlockKeySelector, KeySelector

for _module in pkgutil.iter_modules(__path__):  # each module registers the selectors it defines
    importlib.import_module(f"{__name__}.{_module.name}")

from src.selectors.block import BlockSelector  # noqa: E402  (re-exported)

RULE_SETTINGS = (  # (setting, what it does, the rule a selector must have to take it, the selector that has it)
    ("recent", "keeps a block selector's previous blocks", "choose that way", "block"),
    ("pieces", "splits query_block's key blocks", "read block means that way", "query_block"),
)
BLOCK_SELECTORS = tuple(name for name, cls in SELECTORS.items() if cls.whole_blocks)  # keep whole blocks of keys


def build_selector(name: str, n_heads: int, d_model: int, head_dim: int, seq_len: int,
                   **settings) -> KeySelector | BlockKeySelector:
    """One selector serving ``n_heads`` heads: the class registered as ``name``, given what its ``__init__`` asks for
    among the shapes and ``settings`` (conf/selector/NAME.yaml's keys; the ones not given take src/config.py's
    defaults)."""
    if name not in SELECTORS:
        raise ValueError(f"selector.name={name!r} is unknown: use one of {', '.join(SELECTORS)}")
    cls = SELECTORS[name]
    defaults = selector_settings({})
    values = {**defaults, **settings, "n_heads": n_heads, "d_model": d_model, "head_dim": head_dim,
              "seq_len": seq_len}
    wanted = [p for p in inspect.signature(cls.__init__).parameters if p in values]
    for key, what, rule, use in RULE_SETTINGS:  # a setting of some selectors' choice rule, given to another
        if settings.get(key, defaults[key]) != defaults[key] and key not in wanted:
            raise ValueError(f"selector.{key}={settings[key]} {what}, but selector={name} does not {rule}: unset it "
                             f"(selector.{key}={defaults[key]}), or use selector={use}")
    return cls(**{p: values[p] for p in wanted})


__all__ = ["BLOCK_SELECTORS", "BlockKeySelector", "BlockSelector", "KeySelector", "SELECTORS", "build_selector"]
