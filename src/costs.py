"""Analytic cost model: how much arithmetic dense and sparse attention do, counted two ways.

* **Prototype accounting** reproduces the prototype's README tables exactly, flaws included: its "FLOPs" are
  multiply-accumulates (MACs); its dense count 2·T²·d covers QK^T and PV for all heads without the causal mask,
  while its sparse count covers ONE head's selector and approximator and nothing for the other heads.
* **Full accounting** is the count this project uses: FLOPs = 2 × MACs (+ the element-wise work named below), for
  every head of a layer, causal masking counted (a causal QK^T over T queries touches T(T+1)/2 query-key pairs),
  selector included; per layer and per model, next to the projections and MLP that sparse attention leaves as they
  are, so the attention's share of the whole model is visible.

Every component function returns a ``Cost``: ``macs`` (multiply-accumulates of the matrix products) and ``ops``
(element-wise FLOPs: softmax, top-k comparisons). What each one counts and ignores is in its docstring.
It counts arithmetic only, for kernels that skip masked work: not memory traffic nor the gather of the selected
keys (what usually limits sparse attention on a GPU), and not the full T×T score matrices that the framework's
PyTorch selectors (src/selectors/) materialise before masking. FLOPs are a lower bound on time, not a measurement.
Shapes: T sequence length, d = d_model, nh heads, hs = d // nh head size, k keys kept per query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from src.config import ApproximatorConf, SelectorConf
from src.approximators import APPROXIMATORS as APPROXIMATOR_CLASSES
from src.selectors import BLOCK_SELECTORS
from src.selectors import SELECTORS as SELECTOR_CLASSES

SOFTMAX_OPS = 5  # FLOPs per score element in a softmax: max, subtract, exp, sum, divide
TOPK_OPS = 1  # FLOPs per candidate score in a top-k (linear-time selection; a full sort would cost more)


@dataclass(frozen=True)
class Cost:
    """Work of one piece of computation: ``macs`` multiply-accumulates + ``ops`` element-wise FLOPs."""

    macs: int = 0
    ops: int = 0

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.ops  # one MAC = one multiply + one add

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.ops + other.ops)

    def __mul__(self, n: int) -> Cost:
        return Cost(self.macs * n, self.ops * n)

    __rmul__ = __mul__


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


def model_grid(names: Iterable[str] = GRID_NAMES) -> tuple[ModelSize, ...]:
    """The sizes of the model presets ``names``, read from conf/model/NAME.yaml (their one definition)."""
    from omegaconf import OmegaConf

    folder = Path(__file__).resolve().parents[1] / "conf" / "model"
    sizes = []
    for name in names:
        m = OmegaConf.load(folder / f"{name}.yaml")
        sizes.append(ModelSize(name, int(m.d_model), int(m.n_head), int(m.seq_len)))
    return tuple(sizes)


GRID = model_grid()


# --------------------------------------------------------------------------------------------------------------
# 1. Prototype accounting (its README tables, reproduced as they were computed)

PROTO_HEAD_DIM = 64  # the prototype's head size
PROTO_K = 8  # keys kept per query in its compute table
PROTO_HIDDEN = 128  # hidden width of its selector and approximator in its analysis
PROTO_BATCH = 8  # batch size of its memory table
PROTO_BYTES = 4  # fp32


def prototype_dense_macs(T: int, d_model: int) -> int:
    """The prototype's "full attention FLOPs" 2·T²·d: QK^T and PV, all heads, no causal mask; really MACs."""
    return 2 * T * T * d_model


def prototype_sparse_macs(T: int, head_dim: int = PROTO_HEAD_DIM, k: int = PROTO_K, hidden: int = PROTO_HIDDEN) -> int:
    """The prototype's "sparse FLOPs": ONE head's selector + approximator, nothing for the other heads; MACs.

    selector T·hs·hidden + T·hidden·T, approximator T·(k·hs)·hidden + T·hidden·hs.
    """
    selector = T * head_dim * hidden + T * hidden * T
    approximator = T * (k * head_dim) * hidden + T * hidden * head_dim
    return selector + approximator


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


def prototype_compute_rows(grid: Iterable[ModelSize] = GRID) -> list[PrototypeComputeRow]:
    return [
        PrototypeComputeRow(s.d_model, s.seq_len, prototype_dense_macs(s.seq_len, s.d_model),
                            prototype_sparse_macs(s.seq_len))
        for s in grid
    ]


def prototype_memory_k(T: int) -> int:
    """Keys kept per query in the prototype's memory table: min(32, T/8)."""
    return min(32, T // 8)


@dataclass(frozen=True)
class PrototypeMemoryRow:
    """Bytes of the attention-probability matrices only, one layer, batch 8, fp32 (no activations, no indices)."""

    d_model: int
    seq_len: int
    n_head: int
    k: int
    dense_bytes: int  # B·nh·T·T·4
    sparse_bytes: int  # B·nh·T·k·4

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.sparse_bytes


def prototype_memory_row(d_model: int, T: int, batch: int = PROTO_BATCH) -> PrototypeMemoryRow:
    nh, k = d_model // PROTO_HEAD_DIM, prototype_memory_k(T)
    return PrototypeMemoryRow(d_model, T, nh, k, batch * nh * T * T * PROTO_BYTES, batch * nh * T * k * PROTO_BYTES)


def prototype_memory_rows(grid: Iterable[ModelSize] = GRID) -> list[PrototypeMemoryRow]:
    """The grid's rows (heads = d_model / 64) plus the README's check row 512d / T=512 / 8 heads, sorted."""
    shapes = {(s.d_model, s.seq_len) for s in grid} | {(512, 512)}
    return [prototype_memory_row(d, T) for d, T in sorted(shapes)]


# --------------------------------------------------------------------------------------------------------------
# 2. Full accounting: the components, per head


def causal_pairs(T: int) -> int:
    """Query-key pairs a causal attention over T positions touches: 1 + 2 + ... + T = T(T+1)/2."""
    return T * (T + 1) // 2


def dense_attention(T: int, hs: int, softmax_ops: int = SOFTMAX_OPS) -> Cost:
    """Dense causal attention (SDPA), one head: QK^T + PV over T(T+1)/2 pairs, softmax counted per score."""
    pairs = causal_pairs(T)
    return Cost(macs=2 * pairs * hs, ops=softmax_ops * pairs)


def mlp_selector(T: int, hs: int, hidden: int, topk_ops: int = TOPK_OPS) -> Cost:
    """The prototype's KeySelector, one head: Linear(hs -> hidden) -> ReLU -> Linear(hidden -> seq_len), top-k.

    T·hs·hidden + T·hidden·T MACs: Θ(T²·hidden), the output layer scores every position (the causal mask is
    applied to its logits afterwards, so it saves nothing); top-k over T candidates per query; ReLU ignored.
    """
    return Cost(macs=T * hs * hidden + T * hidden * T, ops=topk_ops * T * T)


def indexer_selector(T: int, d_model: int, d_index: int, topk_ops: int = TOPK_OPS) -> Cost:
    """Content-based indexer (after DeepSeek-V3.2's lightning indexer), one head.

    Query and key projections from the layer input x (B, T, d): 2·T·d·d_index MACs; causal scores
    T(T+1)/2·d_index MACs; top-k over the causal candidates. Its ReLU/weighting is ignored.
    """
    pairs = causal_pairs(T)
    return Cost(macs=2 * T * d_model * d_index + pairs * d_index, ops=topk_ops * pairs)


def oracle_selector(T: int, hs: int, topk_ops: int = TOPK_OPS) -> Cost:
    """The teacher's exact top-k, one head: the full causal QK^T (T(T+1)/2·hs MACs) + top-k; no softmax needed."""
    pairs = causal_pairs(T)
    return Cost(macs=pairs * hs, ops=topk_ops * pairs)


def causal_block_pairs(T: int, block: int) -> int:
    """(query, key block) pairs a causal block selector scores: query t sees blocks 0..t//B, ≈ T·(T/B)/2."""
    return sum(t // block + 1 for t in range(T))


def block_selector(T: int, hs: int, block: int, topk_ops: int = TOPK_OPS) -> Cost:
    """Block selection (MoBA/NSA style), one head: mean-pool keys per block (T·hs, counted as MACs), score each
    query against the causal blocks (≈ T·(T/B)/2·hs MACs: Θ(T²/B·hs)), top-k over those blocks.

    This is MoBA's gate, per query, pooling the head's own keys (width hs). The framework's selector
    (``indexed_block_selector``) chooses once per block of queries, from learned index vectors of width d_index.
    """
    block_pairs = causal_block_pairs(T, block)
    return Cost(macs=T * hs + block_pairs * hs, ops=topk_ops * block_pairs)


def indexed_block_selector(T: int, d_model: int, d_index: int, block: int, topk_ops: int = TOPK_OPS) -> Cost:
    """The framework's block selector (src/selectors/block.py), one head: what ``SELECTORS["block"]`` counts.

    One choice per block of queries (R = ⌈T/B⌉ of them): pooling the inputs per block T·d (counted per head, an
    upper bound); index queries of the R first queries and index keys of the R block means, 2·R·d·d_index MACs;
    scores of the causal (query block, key block) pairs R(R+1)/2·d_index MACs; top-k over them.
    Θ(T·d + (T/B)²·d_index).
    """
    R = -(-T // block)
    pairs = causal_pairs(R)
    return Cost(macs=T * d_model + 2 * R * d_model * d_index + pairs * d_index, ops=topk_ops * pairs)


def block_sparse_pairs(T: int, block: int, n: int) -> int:
    """(query, key) pairs the block-sparse kernels read: each block of queries attends its own block causally and
    n - 1 earlier whole blocks (fewer where there are fewer earlier blocks). Exact, by summing over query blocks."""
    pairs = 0
    for r in range(-(-T // block)):
        rows = min(block, T - r * block)
        pairs += rows * (rows + 1) // 2 + min(n - 1, r) * block * rows
    return pairs


def block_softmax_attention(T: int, hs: int, block: int, n: int, softmax_ops: int = SOFTMAX_OPS) -> Cost:
    """Exact softmax over n chosen blocks per block of queries, one head (flex and tiles kernels, or gathered):
    QK^T + PV over ``block_sparse_pairs`` pairs, softmax counted per score."""
    pairs = block_sparse_pairs(T, block, n)
    return Cost(macs=2 * pairs * hs, ops=softmax_ops * pairs)


def mlp_approximator(T: int, hs: int, k: int, hidden: int) -> Cost:
    """The prototype's HeadApproximator, one head: Linear(k·hs -> hidden) -> ReLU -> Linear(hidden -> hs).

    T·k·hs·hidden + T·hidden·hs MACs (its input is always k values wide, padded for early queries); ReLU ignored.
    """
    return Cost(macs=T * k * hs * hidden + T * hidden * hs)


def softmax_approximator(T: int, hs: int, k: int, softmax_ops: int = SOFTMAX_OPS) -> Cost:
    """Exact softmax attention over the k selected keys, one head: scores T·k·hs + weighted sum T·k·hs MACs.

    Counts k keys for every query, an upper bound: query t < k has only t + 1 keys (≤ k²/2 pairs too many).
    """
    return Cost(macs=2 * T * k * hs, ops=softmax_ops * T * k)


# --------------------------------------------------------------------------------------------------------------
# 2b. Full accounting: layers and models


@dataclass(frozen=True)
class ComponentSizes:
    """Sizes of the selectors and approximators: the framework's defaults (src/config.py)."""

    selector_hidden: int = SelectorConf.hidden  # mlp selector hidden width (the prototype's analysis used 128)
    approximator_hidden: int = ApproximatorConf.hidden  # mlp approximator hidden width
    d_index: int = SelectorConf.d_index  # indexer and block selector query/key width
    block: int = SelectorConf.block_size  # block selector block size B
    softmax_ops: int = SOFTMAX_OPS
    topk_ops: int = TOPK_OPS


def positional_selector() -> Cost:
    """The window baselines (window, sink_window and their block versions): the kept keys follow from positions
    alone, index arithmetic that is not counted."""
    return Cost(macs=0)


# each component's formula sits beside its class (its ``cost``), naming the functions above
SELECTORS: dict[str, Callable[[int, int, int, ComponentSizes], Cost]] = {  # (T, d_model, hs, sizes) -> Cost
    name: cls.cost for name, cls in SELECTOR_CLASSES.items() if cls.cost is not None}
LEARNED_PAIRS = tuple(f"{sel}+{app}" for sel in ("mlp", "indexer", "oracle", "block")  # the cost tables' pairs
                      for app in ("mlp", "softmax"))
APPROXIMATORS: dict[str, Callable[[int, int, int, ComponentSizes], Cost]] = {  # (T, hs, k, sizes) -> Cost
    name: cls.cost for name, cls in APPROXIMATOR_CLASSES.items() if cls.cost is not None}
PAIRS = tuple(f"{sel}+{app}" for sel in SELECTORS for app in APPROXIMATORS)  # every selector+approximator pair


def keys_kept(T: int, k: int | None = None) -> int:
    """Keys kept per query: T/8 (at least 1) unless ``k`` fixes it; never more than the T positions there are."""
    return max(1, T // 8) if k is None else min(k, T)


def keys_attended(selector: str, T: int, k: int | None = None, sizes: ComponentSizes = ComponentSizes()) -> int:
    """Keys each query's approximator reads: ``keys_kept``, except that the block selector keeps whole blocks,
    so its k is rounded up to a multiple of the block size B (at most T).
    """
    return min(T, blocks_kept(T, k, sizes) * sizes.block) if selector in BLOCK_SELECTORS else keys_kept(T, k)


def blocks_kept(T: int, k: int | None = None, sizes: ComponentSizes = ComponentSizes()) -> int:
    """Blocks each block of queries keeps: ``keys_kept`` rounded up to whole blocks, at most all ⌈T/B⌉ of them
    (src/sparse/budget.py's rule)."""
    return min(-(-T // sizes.block), -(-keys_kept(T, k) // sizes.block))


def dense_layer(d_model: int, n_head: int, T: int, sizes: ComponentSizes = ComponentSizes()) -> Cost:
    """Dense causal attention core of one layer: every head."""
    return n_head * dense_attention(T, d_model // n_head, sizes.softmax_ops)


def sparse_layer(pair: str, d_model: int, n_head: int, T: int, k: int | None = None,
                 sizes: ComponentSizes = ComponentSizes()) -> Cost:
    """Sparse attention core of one layer: n_head × (selector + approximator). ``pair`` is 'selector+approximator'."""
    selector, _, approximator = pair.partition("+")
    if selector not in SELECTORS or approximator not in APPROXIMATORS:
        raise ValueError(f"unknown pair {pair!r}: selectors {sorted(SELECTORS)}, approximators {sorted(APPROXIMATORS)}")
    hs = d_model // n_head
    if selector in BLOCK_SELECTORS and approximator == "softmax":  # whole blocks: the exact pairs the kernels read
        attend = block_softmax_attention(T, hs, sizes.block, blocks_kept(T, k, sizes), sizes.softmax_ops)
    else:
        attend = APPROXIMATORS[approximator](T, hs, keys_attended(selector, T, k, sizes), sizes)
    return n_head * (SELECTORS[selector](T, d_model, hs, sizes) + attend)


def rest_of_layer(d_model: int, T: int) -> Cost:
    """What sparse attention leaves unchanged, one layer: q/k/v/out projections 4·T·d² + MLP (d -> 4d -> d)
    8·T·d² MACs. LayerNorm, GELU, residuals, embeddings and the lm_head are ignored (small next to these).
    """
    return Cost(macs=4 * T * d_model**2 + 8 * T * d_model**2)


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


def pair_cost(size: ModelSize, pair: str, n_layer: int = 4, k: int | None = None,
              sizes: ComponentSizes = ComponentSizes()) -> PairCost:
    d, nh, T = size.d_model, size.n_head, size.seq_len
    return PairCost(
        size=size, pair=pair, k=keys_attended(pair.partition("+")[0], T, k, sizes), n_layer=n_layer,
        dense_attn=dense_layer(d, nh, T, sizes), sparse_attn=sparse_layer(pair, d, nh, T, k, sizes),
        rest=rest_of_layer(d, T),
    )


def full_rows(grid: Iterable[ModelSize] = GRID, pairs: Iterable[str] = LEARNED_PAIRS, n_layer: int = 4,
              k: int | None = None, sizes: ComponentSizes = ComponentSizes()) -> list[PairCost]:
    """Every (size, pair) of the grid, size-major."""
    pairs = tuple(pairs)
    return [pair_cost(s, p, n_layer, k, sizes) for s in grid for p in pairs]


POW2_SEQ_LENS = tuple(2**i for i in range(4, 21))  # 16 ... 1,048,576


def crossover_seq_len(pair: str, d_model: int, n_head: int, seq_lens: Iterable[int] = POW2_SEQ_LENS,
                      k: int | None = None, sizes: ComponentSizes = ComponentSizes()) -> int | None:
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


def flops_columns(cfg: dict) -> dict:
    """Full-accounting FLOPs of a run's hybrid (only its sparse heads are sparse), one sequence, forward, from its
    config (a plain dict); {} when the config lacks a size or names a pair without a cost formula."""
    from src.hybrid import approximator_sizes, selector_sizes
    from src.sparse import Budget

    m, hyb = cfg.get("model", {}), cfg.get("hybrid", {})
    sel, app = cfg.get("selector", {}).get("name"), cfg.get("approximator", {}).get("name")
    pair = f"{sel}+{app}"
    try:
        d, nh, T, n_layer = m["d_model"], m["n_head"], m["seq_len"], m["n_layer"]
        k = Budget.parse(hyb["top_k"] if hyb.get("budget") is None else hyb["budget"]).keys(T)
        sel_cfg, app_cfg = selector_sizes(cfg["selector"]), approximator_sizes(cfg["approximator"])
        sizes = ComponentSizes(selector_hidden=sel_cfg["hidden"], approximator_hidden=app_cfg["hidden"],
                               d_index=sel_cfg["d_index"], block=sel_cfg["block_size"])
        dense, sparse = dense_layer(d, nh, T, sizes).flops, sparse_layer(pair, d, nh, T, k, sizes).flops
    except (KeyError, TypeError, ValueError):
        return {}
    rest = rest_of_layer(d, T).flops
    layers, heads = count_sparse(hyb.get("layers"), n_layer), count_sparse(hyb.get("heads"), nh)
    hybrid_layer = rest + (sparse // nh) * heads + (dense // nh) * (nh - heads)
    dense_model = n_layer * (rest + dense)
    sparse_model = layers * hybrid_layer + (n_layer - layers) * (rest + dense)
    return {"sparse_heads": layers * heads, "attn_flops_speedup": dense / sparse,
            "dense_model_flops": dense_model, "sparse_model_flops": sparse_model,
            "model_flops_speedup": dense_model / sparse_model}


# --------------------------------------------------------------------------------------------------------------
# decoding: one new token against a cache of L keys (python -m src.bench --decode)


def dense_decode(L: int, d_model: int, n_head: int, softmax_ops: int = SOFTMAX_OPS) -> Cost:
    """One query against L cached keys, every head: q·k and the weighted sum of values, 2·L·d MACs, + softmax."""
    return Cost(macs=2 * L * d_model, ops=softmax_ops * L * n_head)


def block_decode(L: int, d_model: int, n_head: int, keys: int, block: int, d_index: int, scoring_step: bool = False,
                 softmax_ops: int = SOFTMAX_OPS, topk_ops: int = TOPK_OPS) -> Cost:
    """One query of the block selector's sparse decoding (src/sparse/decode.py), every head: attention over ``keys``
    keys (the chosen blocks) + the new key's index vector added to its block's summary (d·nh·d_index MACs) + once
    per block of queries the index query, the own block's score and the scores of the L / block summaries
    (d·nh·(d_index + 1) + nh·(L / block)·d_index MACs, top-k over them): spread over the block's tokens (per token on
    average), or whole (``scoring_step``: the block's first query)."""
    nb = -(-L // block)
    scoring = Cost(macs=d_model * n_head * (d_index + 1) + n_head * nb * d_index, ops=topk_ops * n_head * nb)
    per_token = Cost(macs=2 * keys * d_model + d_model * n_head * d_index, ops=softmax_ops * keys * n_head)
    if scoring_step:
        return per_token + scoring
    return per_token + Cost(macs=-(-scoring.macs // block), ops=-(-scoring.ops // block))


def decode_model(d_model: int, n_layer: int, vocab: int, attention: Cost) -> Cost:
    """One generated token of the whole model: per layer ``attention`` + projections and MLP (rest_of_layer for one
    token), + the lm_head (d·V MACs)."""
    return n_layer * (attention + rest_of_layer(d_model, 1)) + Cost(macs=d_model * vocab)
