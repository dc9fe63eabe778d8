"""The cost formulas: how much arithmetic each piece of dense and sparse attention does, one head at a time.

Every function returns a ``Cost``: ``macs`` (multiply-accumulates of the matrix products) and ``ops`` (element-wise
FLOPs: softmax, top-k comparisons); FLOPs = 2 × MACs + ops. What each one counts and ignores is in its docstring.
They count arithmetic only, for kernels that skip masked work: not memory traffic nor the gather of the selected keys
(what usually limits sparse attention on a GPU), and not the full T×T score matrices that the framework's PyTorch
selectors (src/selectors/) materialise before masking. FLOPs are a lower bound on time, not a measurement.

Each selector and approximator names its formula in its ``cost`` (src/selectors/, src/approximators/); the layer,
model and prototype accounting built from them is src/costs/accounting.py. This module imports nothing of the
project but the block count (src/sparse/choice.py ``n_blocks``, ``ceil_div``), so that every part of it can import
the formulas.
Shapes: T sequence length, d = d_model, nh heads, hs = d // nh head size, k keys kept per query, B block size.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.sparse.choice import ceil_div, n_blocks

SOFTMAX_OPS = 5  # FLOPs per score element in a softmax: max, subtract, exp, sum, divide
TOPK_OPS = 1  # FLOPs per candidate score in a top-k (linear-time selection; a full sort would cost more)
BACKWARD = 2  # the backward pass of attention over its forward: the gradients of q, k and v take four products
#              (dV = PᵀdO, dP = dOVᵀ, dQ = dSK, dK = dSᵀQ) against the forward's two (QKᵀ, PV); the usual 2x


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



# --------------------------------------------------------------------------------------------------------------
# the prototype's accounting (its README tables, reproduced as they were computed)

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
    R = n_blocks(T, block)
    pairs = causal_pairs(R)
    return Cost(macs=T * d_model + 2 * R * d_model * d_index + pairs * d_index, ops=topk_ops * pairs)


def query_block_selector(T: int, d_model: int, d_index: int, block: int, topk_ops: int = TOPK_OPS,
                         pieces: int = 1) -> Cost:
    """MoBA's per-query gate as the framework learns it (src/selectors/query_block.py), one head: what
    ``SELECTORS["query_block"]`` counts.

    Pooling the inputs per piece of a key block T·d (counted per head, an upper bound); index queries of all T
    queries and index keys of the ⌈T/B⌉·P piece means, (T + ⌈T/B⌉·P)·d·d_index MACs; scores of every (query, piece of
    an earlier or own key block) pair, P·``causal_block_pairs``·d_index MACs, and with P > 1 the log mean exp over a
    block's pieces, 2·P ops a pair; top-k over the blocks. Θ(T·d·d_index + T²/B·P·d_index).
    """
    pairs = causal_block_pairs(T, block)
    return Cost(macs=T * d_model + (T + n_blocks(T, block) * pieces) * d_model * d_index + pairs * pieces * d_index,
                ops=topk_ops * pairs + (2 * pieces * pairs if pieces > 1 else 0))


def query_bound_selector(T: int, d_model: int, d_index: int, block: int, topk_ops: int = TOPK_OPS) -> Cost:
    """The per-query gate with Quest's bound on learned index keys (src/selectors/query_bound.py), one head: index
    queries and keys of all T positions, 2·T·d·d_index MACs; every block's per-channel largest and smallest index
    key, 2·T·d_index comparisons (counted as MACs); every query against both bounds of the own and earlier blocks,
    2·``causal_block_pairs``·d_index; top-k over them. Θ(T·d·d_index + T²/B·d_index)."""
    pairs = causal_block_pairs(T, block)
    return Cost(macs=2 * T * d_model * d_index + 2 * T * d_index + 2 * pairs * d_index, ops=topk_ops * pairs)


def moba_gate(T: int, head_dim: int, block: int, per_query: bool, topk_ops: int = TOPK_OPS) -> Cost:
    """MoBA's parameter-free gate (src/selectors/moba.py), one head: the mean key of every block T·hs, then the
    head's own query against the mean keys of the own and earlier blocks -- the first query of each block of
    queries, R(R+1)/2·hs MACs (``moba``), or every query, ``causal_block_pairs``·hs (``query_moba``) -- and top-k
    over them. Θ((T/B)²·hs) or Θ(T²/B·hs)."""
    pairs = causal_block_pairs(T, block) if per_query else causal_pairs(n_blocks(T, block))
    return Cost(macs=T * head_dim + pairs * head_dim, ops=topk_ops * pairs)


def quest_gate(T: int, head_dim: int, block: int, topk_ops: int = TOPK_OPS) -> Cost:
    """Quest's bound per query (src/selectors/quest.py), one head: every block's per-channel largest and smallest
    key, 2·T·hs comparisons (counted as MACs), then every query against both bounds of the own and earlier blocks,
    2·``causal_block_pairs``·hs MACs, and top-k over them. Θ(T²/B·hs)."""
    pairs = causal_block_pairs(T, block)
    return Cost(macs=2 * T * head_dim + 2 * pairs * head_dim, ops=topk_ops * pairs)


def block_sparse_pairs(T: int, block: int, n: int) -> int:
    """(query, key) pairs the block-sparse kernels read: each block of queries attends its own block causally and
    n - 1 earlier whole blocks (fewer where there are fewer earlier blocks). Exact, by summing over query blocks; the
    same count when every query chooses its own n - 1 earlier blocks (query_block): what query_tiles computes
    (src/sparse/query_tiles.py), while query_flex works on the union of a query block's choices."""
    pairs = 0
    for r in range(n_blocks(T, block)):
        rows = min(block, T - r * block)
        pairs += rows * (rows + 1) // 2 + min(n - 1, r) * block * rows
    return pairs


def block_softmax_attention(T: int, hs: int, block: int, n: int, softmax_ops: int = SOFTMAX_OPS) -> Cost:
    """Exact softmax over n chosen blocks per block of queries or per query, one head (flex and tiles kernels,
    query_flex and query_tiles, or gathered): QK^T + PV over ``block_sparse_pairs`` pairs, softmax counted per
    score."""
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


def positional_selector() -> Cost:
    """The window baselines (window, sink_window and their block versions): the kept keys follow from positions
    alone, index arithmetic that is not counted."""
    return Cost(macs=0)


def rest_of_layer(d_model: int, T: int) -> Cost:
    """What sparse attention leaves unchanged, one layer: q/k/v/out projections 4·T·d² + MLP (d -> 4d -> d)
    8·T·d² MACs. LayerNorm, GELU, residuals, embeddings and the lm_head are ignored (small next to these).
    """
    return Cost(macs=4 * T * d_model**2 + 8 * T * d_model**2)


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
    nb = n_blocks(L, block)
    scoring = Cost(macs=d_model * n_head * (d_index + 1) + n_head * nb * d_index, ops=topk_ops * n_head * nb)
    per_token = Cost(macs=2 * keys * d_model + d_model * n_head * d_index, ops=softmax_ops * keys * n_head)
    if scoring_step:
        return per_token + scoring
    return per_token + Cost(macs=ceil_div(scoring.macs, block), ops=ceil_div(scoring.ops, block))


def decode_model(d_model: int, n_layer: int, vocab: int, attention: Cost) -> Cost:
    """One generated token of the whole model: per layer ``attention`` + projections and MLP (rest_of_layer for one
    token), + the lm_head (d·V MACs)."""
    return n_layer * (attention + rest_of_layer(d_model, 1)) + Cost(macs=d_model * vocab)
