"""What every key selector shares. Two kinds, each scoring a *chunk of queries* at a time, so that nothing T × T
need exist at once (src/sparse/gather.py runs them chunk by chunk):

* ``KeySelector`` (token level: mlp, indexer, oracle): ``prepare`` computes once what every chunk reads,
  ``score_rows`` scores the keys of some queries, (B, h, R, T); the causal top-K (src/sparse/selection.py) turns
  scores into each query's K earlier keys.
* ``BlockKeySelector`` (block level: block): ``block_scores`` scores key blocks for blocks of queries,
  (B, h, R, nb); ``choose`` keeps each query block's own block and its best earlier blocks
  (src/sparse/choice.py). A block-sparse kernel (flex, tiles) runs such a choice without gathering keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from src.sparse.choice import BlockChoice, causal_block_topk, concat_choices, n_blocks
from src.sparse.selection import Selection, causal_topk

CHOOSE_CHUNK = 1024  # query blocks scored at a time by ``BlockKeySelector.choose``

SELECTORS: dict[str, type] = {}  # name -> class: every selector class with a ``name``, registered as it is defined


def register(cls) -> None:
    if cls.__dict__.get("name"):
        if cls.name in SELECTORS and SELECTORS[cls.name] is not cls:
            raise TypeError(f"two selectors are named {cls.name!r}: {SELECTORS[cls.name].__qualname__} and "
                            f"{cls.__qualname__}")
        SELECTORS[cls.name] = cls


class KeySelector(nn.Module):
    """Token-level selector. Subclasses set ``name`` (selector=NAME, conf/selector/NAME.yaml) and implement
    ``prepare`` and ``score_rows``."""

    name: str | None = None
    cost = None  # cost(T, d_model, head_dim, sizes) -> src.costs.formulas.Cost of one head's scoring; None: not counted

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(cls)

    trainable = True  # False for selectors with nothing to learn (the oracles, the window baselines)
    default_loss = "kl"  # the distillation loss used when selector.loss is not set
    picks_blocks = False  # True: one choice per block of queries, which the block-sparse kernels (flex, tiles) run
    whole_blocks = False  # True: keeps whole blocks of keys, so the budget is counted in whole blocks
    query_blocks = False  # True: every query chooses whole key blocks (``choose`` -> a QueryBlockChoice), which the
    #                       per-query block-sparse kernels (query_tiles, query_flex) run
    predicts_mass = True  # the softmax of the scores predicts attention (hybrid.mass reads it); False: positions
    causal = True  # a query's choice reads nothing after it (False: an upper bound to measure against, not a model)

    def prepare(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> Any:
        """x (B, T, C) the layer's input; q, k (B, h, T, hs) of the served heads -> what ``score_rows`` reads."""
        raise NotImplementedError

    def score_rows(self, ctx: Any, rows: torch.Tensor) -> torch.Tensor:
        """Scores of every key for the queries at positions ``rows`` (R,) -> (B, h, R, T)."""
        raise NotImplementedError

    def scores(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, h, T, T): every query's scores (what the distillation losses read)."""
        return self.score_rows(self.prepare(x, q, k), torch.arange(x.size(1), device=x.device))

    def select_rows(self, ctx: Any, rows: torch.Tensor, top_k: int, mass: float | None = None) -> Selection:
        """The causal top-K of the queries ``rows``; with ``mass``, only as many of them as reach that share of
        the predicted attention (src/sparse/selection.py)."""
        return causal_topk(self.score_rows(ctx, rows), top_k, rows, mass)

    def select(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, top_k: int,
               mass: float | None = None) -> Selection:
        return self.select_rows(self.prepare(x, q, k), torch.arange(x.size(1), device=x.device), top_k, mass)


class BlockKeySelector(nn.Module):
    """Block-level selector over blocks of ``block_size`` keys and queries. Subclasses set ``name`` and implement
    ``block_scores``."""

    name: str | None = None
    cost = None  # as KeySelector's

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(cls)

    trainable = True
    default_loss = "kl"
    picks_blocks = True
    whole_blocks = True
    predicts_mass = True
    causal = True

    def __init__(self, block_size: int, recent: int = 0):
        super().__init__()
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"selector.block_size={block_size} must be a positive number of keys")
        if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
            raise ValueError(f"selector.recent={recent} must be a number of blocks, 0 or more")
        self.block_size, self.recent = block_size, recent

    def block_scores(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Scores of every key block for the query blocks ``rows`` (R,) -> (B, h, R, nb). The blocks after a row's
        own are never used; the own block's score only by ``hybrid.mass`` (the own block is always kept). A
        causal selector's row reads nothing after its block's first query."""
        raise NotImplementedError

    def choose(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, n_keep: int, mass: float | None = None,
               chunk: int = CHOOSE_CHUNK) -> BlockChoice:
        """Own block + the n_keep - 1 best earlier blocks of every query block (with ``mass``: only as many as
        reach that share of the predicted attention), ``chunk`` query blocks at a time."""
        T = x.size(1)
        nb = n_blocks(T, self.block_size)
        rows = torch.arange(nb, device=x.device)
        return concat_choices([
            causal_block_topk(self.block_scores(x, q, k, rows[s:s + chunk]), n_keep, rows[s:s + chunk],
                              self.block_size, T, mass, self.recent)
            for s in range(0, nb, chunk)
        ])
