"""The cost model, counted two ways, from the formulas (src/costs/formulas.py) and the registries of selectors and
approximators (each names its formula in its ``cost``):

* **Prototype accounting** reproduces the prototype's README tables exactly, flaws included: its "FLOPs" are
  multiply-accumulates (MACs); its dense count 2·T²·d covers QK^T and PV for all heads without the causal mask,
  while its sparse count covers ONE head's selector and approximator and nothing for the other heads.
* **Full accounting** is the count this project uses: FLOPs = 2 × MACs (+ the element-wise work the formulas
  name), for every head of a layer, causal masking counted, selector included; per layer and per model, next to the
  projections and MLP that sparse attention leaves as they are, so the attention's share of the whole model is
  visible. Keys read per query follow the hybrid's own rule (src/sparse/budget.py ``Budget.keys_read``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from omegaconf import OmegaConf

from src.approximators import APPROXIMATORS as APPROXIMATOR_CLASSES
from src.config import ApproximatorConf, SelectorConf, approximator_settings, selector_settings
from src.costs.formulas import (BACKWARD, PROTO_BATCH, SOFTMAX_OPS, TOPK_OPS, Cost, PrototypeMemoryRow,
                                block_softmax_attention, dense_attention, prototype_dense_macs, prototype_memory_row,
                                prototype_sparse_macs, rest_of_layer)
from src.selectors import BLOCK_SELECTORS
from src.selectors import SELECTORS as SELECTOR_CLASSES
from src.sparse.budget import Budget

DEFAULT_BUDGET = 0.125  # keys per query when none is given: T/8 (the prototype's analyses; src/sparse/budget.py)


@dataclass(frozen=True)
class ModelSize:
    """One size of the model grid (conf/model/*.yaml)."""

    name: str
    d_model: int
    n_head: int
    seq_len: int  # T

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


GRID_NAMES = ("tiny", "small", "base", "medium", "large", "xl")  # the prototype's size grid: heads of 64, T doubling


@functools.lru_cache(maxsize=None)
def model_grid(names: tuple[str, ...] = GRID_NAMES) -> tuple[ModelSize, ...]:
    """The sizes of the model presets ``names``, read from conf/model/NAME.yaml (their one definition) when first
    asked for."""
    folder = Path(__file__).resolve().parents[2] / "conf" / "model"
    sizes = []
    for name in names:
        m = OmegaConf.load(folder / f"{name}.yaml")
        sizes.append(ModelSize(name, int(m.d_model), int(m.n_head), int(m.seq_len)))
    return tuple(sizes)


@dataclass(frozen=True)
class ComponentSizes:
    """Sizes of the selectors and approximators: the framework's defaults (src/config.py)."""

    selector_hidden: int = SelectorConf.hidden  # mlp selector hidden width (the prototype's analysis used 128)
    approximator_hidden: int = ApproximatorConf.hidden  # mlp approximator hidden width
    d_index: int = SelectorConf.d_index  # indexer and block selector query/key width
    block: int = SelectorConf.block_size  # block selector block size B
    pieces: int = SelectorConf.pieces  # query_block: mean index keys per key block
    softmax_ops: int = SOFTMAX_OPS
    topk_ops: int = TOPK_OPS


# --------------------------------------------------------------------------------------------------------------
# the prototype's accounting


@dataclass(frozen=True)
class PrototypeComputeRow:
    """One row of the prototype's compute table (MACs, which it calls FLOPs)."""

    d_model: int
    seq_len: int
    dense_macs: int
    sparse_macs: int  # one head only

    @property
    def speedup(self) -> float:
        return self.dense_macs / self.sparse_macs


def prototype_compute_rows(grid: Iterable[ModelSize] | None = None) -> list[PrototypeComputeRow]:
    return [PrototypeComputeRow(s.d_model, s.seq_len, prototype_dense_macs(s.seq_len, s.d_model),
                                prototype_sparse_macs(s.seq_len)) for s in grid or model_grid()]


def prototype_memory_rows(grid: Iterable[ModelSize] | None = None) -> list[PrototypeMemoryRow]:
    """The grid's rows (heads = d_model / 64) plus the README's check row 512d / T=512 / 8 heads, sorted."""
    shapes = {(s.d_model, s.seq_len) for s in grid or model_grid()} | {(512, 512)}
    return [prototype_memory_row(d, T, PROTO_BATCH) for d, T in sorted(shapes)]


# --------------------------------------------------------------------------------------------------------------
# full accounting: layers and models

# each component's formula sits beside its class (its ``cost``)
SELECTORS = {name: cls.cost for name, cls in SELECTOR_CLASSES.items() if cls.cost is not None}  # (T, d, hs, sizes)
APPROXIMATORS = {name: cls.cost for name, cls in APPROXIMATOR_CLASSES.items() if cls.cost is not None}  # (T, hs, k, s)
LEARNED_PAIRS = tuple(f"{sel}+{app}" for sel in ("mlp", "indexer", "oracle", "block")  # the cost tables' pairs
                      for app in ("mlp", "softmax"))
PAIRS = tuple(f"{sel}+{app}" for sel in SELECTORS for app in APPROXIMATORS)  # every selector+approximator pair


def budget_of(k: int | float | Budget | None) -> Budget:
    """A budget from the cost model's ``k``: keys per query (an int), a fraction of T, or None for T/8."""
    return k if isinstance(k, Budget) else Budget.parse(DEFAULT_BUDGET if k is None else k, "k")


def keys_read(selector: str, T: int, k=None, sizes: ComponentSizes = ComponentSizes()) -> int:
    """Keys each query's approximator reads under ``k`` (src/sparse/budget.py ``Budget.keys_read``: a block
    selector reads whole blocks)."""
    return budget_of(k).keys_read(T, sizes.block if selector in BLOCK_SELECTORS else None)


def dense_layer(d_model: int, n_head: int, T: int, sizes: ComponentSizes = ComponentSizes(),
                backward: bool = False) -> Cost:
    """Dense causal attention core of one layer: every head; with ``backward``, its forward and backward."""
    return n_head * dense_attention(T, d_model // n_head, sizes.softmax_ops) * (1 + BACKWARD * backward)


def sparse_layer(pair: str, d_model: int, n_head: int, T: int, k=None,
                 sizes: ComponentSizes = ComponentSizes(), backward: bool = False) -> Cost:
    """Sparse attention core of one layer: n_head × (selector + approximator). ``pair`` is 'selector+approximator'.
    With ``backward``, the approximator's forward and backward and the selection once (a discrete choice: no
    gradient flows through it)."""
    selector, _, approximator = pair.partition("+")
    if selector not in SELECTORS or approximator not in APPROXIMATORS:
        raise ValueError(f"unknown pair {pair!r}: selectors {sorted(SELECTORS)}, approximators {sorted(APPROXIMATORS)}")
    hs = d_model // n_head
    if selector in BLOCK_SELECTORS and approximator == "softmax":  # whole blocks: the exact pairs the kernels read
        attend = block_softmax_attention(T, hs, sizes.block, budget_of(k).blocks(T, sizes.block), sizes.softmax_ops)
    else:
        attend = APPROXIMATORS[approximator](T, hs, keys_read(selector, T, k, sizes), sizes)
    return n_head * (SELECTORS[selector](T, d_model, hs, sizes) + attend * (1 + BACKWARD * backward))


def model_flops(d_model: int, n_head: int, n_layer: int, T: int, vocab: int) -> int:
    """FLOPs of one dense forward of the whole model over T tokens: every layer's attention core, projections and
    MLP, and the lm_head (what the teacher tells Lightning's ThroughputMonitor, times 3 for the backward)."""
    return n_layer * (dense_layer(d_model, n_head, T) + rest_of_layer(d_model, T)).flops + 2 * T * d_model * vocab


def training_flops(d_model: int, n_head: int, n_layer: int, T: int, vocab: int, gate: str = "none",
                   sparse_layers: int = 0, budget=None, block: int = 64) -> int:
    """FLOPs of one training step (forward + backward, the backward twice the forward) over T tokens of a model whose
    ``sparse_layers`` layers are natively sparse on ``gate`` (``model.sparse``; their selection counted once) and
    whose others are dense."""
    dense = 3 * model_flops(d_model, n_head, n_layer, T, vocab)
    if gate == "none" or not sparse_layers:
        return dense
    sizes = ComponentSizes(block=block)
    sparse = sparse_layer(f"{gate}+softmax", d_model, n_head, T, budget, sizes, backward=True)
    return dense - sparse_layers * (3 * dense_layer(d_model, n_head, T, sizes).flops - sparse.flops)


@dataclass(frozen=True)
class PairCost:
    """Dense vs one sparse pair for one model size, forward pass of one sequence (batch 1)."""

    size: ModelSize
    pair: str
    k: int  # keys each query's approximator reads
    n_layer: int
    dense_attn: Cost  # per layer, attention core only
    sparse_attn: Cost  # per layer, attention core only
    rest: Cost = field(repr=False)  # per layer, projections + MLP: the same for both

    @property
    def attn_speedup(self) -> float:
        return self.dense_attn.flops / self.sparse_attn.flops

    @property
    def dense_model_flops(self) -> int:
        return self.n_layer * (self.dense_attn + self.rest).flops

    @property
    def sparse_model_flops(self) -> int:
        return self.n_layer * (self.sparse_attn + self.rest).flops

    @property
    def model_speedup(self) -> float:
        return self.dense_model_flops / self.sparse_model_flops

    @property
    def attn_share(self) -> float:
        """Fraction of the dense model's FLOPs spent in the attention core."""
        return self.dense_attn.flops / (self.dense_attn + self.rest).flops


def pair_cost(size: ModelSize, pair: str, n_layer: int = 4, k=None,
              sizes: ComponentSizes = ComponentSizes()) -> PairCost:
    d, nh, T = size.d_model, size.n_head, size.seq_len
    return PairCost(size=size, pair=pair, k=keys_read(pair.partition("+")[0], T, k, sizes), n_layer=n_layer,
                    dense_attn=dense_layer(d, nh, T, sizes), sparse_attn=sparse_layer(pair, d, nh, T, k, sizes),
                    rest=rest_of_layer(d, T))


def full_rows(grid: Iterable[ModelSize] | None = None, pairs: Iterable[str] = LEARNED_PAIRS, n_layer: int = 4,
              k=None, sizes: ComponentSizes = ComponentSizes()) -> list[PairCost]:
    """Every (size, pair) of the grid, size-major."""
    pairs = tuple(pairs)
    return [pair_cost(s, p, n_layer, k, sizes) for s in grid or model_grid() for p in pairs]


POW2_SEQ_LENS = tuple(2**i for i in range(4, 21))  # 16 ... 1,048,576


def crossover_seq_len(pair: str, d_model: int, n_head: int, seq_lens: Iterable[int] = POW2_SEQ_LENS,
                      k=None, sizes: ComponentSizes = ComponentSizes()) -> int | None:
    """The smallest T in ``seq_lens`` at which the pair's attention core costs fewer FLOPs than dense; None if none.

    Only as fine as ``seq_lens`` (powers of two by default): pass e.g. range(8, 4097) for the exact integer.
    """
    for T in seq_lens:
        if sparse_layer(pair, d_model, n_head, T, k, sizes).flops < dense_layer(d_model, n_head, T, sizes).flops:
            return T
    return None


# --------------------------------------------------------------------------------------------------------------
# a run's hybrid, from its config (the sweep's table, the pipeline's TensorBoard hparams)


def count_sparse(value, n: int) -> int:
    if value == "all":
        return n
    return len(set(value)) if isinstance(value, (list, tuple)) else 1


def run_budget(cfg: dict) -> Budget:
    """A run's budget from its config (a plain dict): ``hybrid.budget``, or ``hybrid.top_k`` keys when unset."""
    hyb = cfg.get("hybrid", {})
    if hyb.get("budget") is None:
        return Budget.parse(hyb["top_k"], "hybrid.top_k")
    return Budget.parse(hyb["budget"], "hybrid.budget")


def flops_columns(cfg: dict) -> dict:
    """Full-accounting FLOPs of a run's hybrid (only its sparse heads are sparse), one sequence, forward, from its
    config (a plain dict); {} when the config lacks a size or names a pair without a cost formula."""
    m, hyb = cfg.get("model", {}), cfg.get("hybrid", {})
    sel, app = cfg.get("selector", {}).get("name"), cfg.get("approximator", {}).get("name")
    try:
        d, nh, T, n_layer = m["d_model"], m["n_head"], m["seq_len"], m["n_layer"]
        sel_cfg, app_cfg = selector_settings(cfg["selector"]), approximator_settings(cfg["approximator"])
        sizes = ComponentSizes(selector_hidden=sel_cfg["hidden"], approximator_hidden=app_cfg["hidden"],
                               d_index=sel_cfg["d_index"], block=sel_cfg["block_size"],
                               pieces=sel_cfg["pieces"])
        budget = run_budget(cfg)
        dense, sparse = dense_layer(d, nh, T, sizes).flops, sparse_layer(f"{sel}+{app}", d, nh, T, budget, sizes).flops
    except (KeyError, TypeError, ValueError):
        return {}
    rest = rest_of_layer(d, T).flops
    layers, heads = count_sparse(hyb.get("layers"), n_layer), count_sparse(hyb.get("heads"), nh)
    hybrid_layer = rest + (sparse // nh) * heads + (dense // nh) * (nh - heads)
    dense_model = n_layer * (rest + dense)
    sparse_model = layers * hybrid_layer + (n_layer - layers) * (rest + dense)
    return {"sparse_heads": layers * heads, "k": keys_read(sel, T, budget, sizes), "attn_flops_speedup": dense / sparse,
            "dense_model_flops": dense_model, "sparse_model_flops": sparse_model,
            "model_flops_speedup": dense_model / sparse_model}
