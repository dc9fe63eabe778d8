"""HybridCausalSelfAttention: a drop-in for the teacher's attention that is sparse in chosen heads.

For each sparse head a selector picks, per query, the keys it may read under a key budget, and an approximator
turns the selected keys and values into the head's output (src/sparse/attention.py runs the two, on the gather
path or a block-sparse kernel); the other heads stay exact (SDPA). The hybrid reuses the teacher's own Q/K/V and
output projections, so only the selector and approximator are new.

Settings (``hybrid.*``, src/config.py): which layers and heads are sparse (a list or ``all``; default layer 0,
head 0, as in the prototype), the budget (``budget``: keys per query, fixed or a fraction of T; unset: ``top_k``
keys; ``mass``: the dynamic budget) and the kernel (``auto | gather | flex | tiles | query_flex | query_tiles |
masked``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.approximators import build_approximator
from src.config import approximator_settings, selector_settings
from src.model import GPT, CausalSelfAttention, GPTConfig, LayerCache, cached_attention
from src.selectors import build_selector
from src.sparse import KERNELS, Budget, SparseAttention, kernel_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HybridSpec:
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    top_k: int  # the token selectors' K when no budget is set
    budget: Budget  # keys per query: hybrid.budget, or top_k keys; and the dynamic budget's hybrid.mass
    kernel: str  # auto | gather | flex | tiles | query_flex | query_tiles | masked

    @classmethod
    def from_config(cls, model: GPTConfig, layers=(0,), heads=(0,), top_k: int = 8, budget=None,
                    kernel: str = "auto", mass=None) -> HybridSpec:
        """Validate ``hybrid.*`` against the model (ValueError, one line naming the setting); ``all`` expands to
        every layer / head."""

        def expand(value, n: int, what: str) -> tuple[int, ...]:
            if value == "all":
                return tuple(range(n))
            items = [value] if isinstance(value, int) else list(value)
            if not items or any(not isinstance(i, int) or not 0 <= i < n for i in items):
                raise ValueError(f"hybrid.{what}={value} must be 'all' or a list of indices in 0..{n - 1}")
            return tuple(sorted(set(items)))

        if model.sparse != "none":
            raise ValueError(f"the teacher is natively sparse (model.sparse={model.sparse}): it is its own sparse "
                             "model, and a hybrid over it is not supported; evaluate the teacher itself, or distil "
                             "from a dense one (model.sparse=none)")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"hybrid.top_k={top_k} must be a positive number of keys")
        if top_k > model.seq_len:
            raise ValueError(f"hybrid.top_k={top_k} is larger than the sequence length model.seq_len={model.seq_len}")
        if Budget.ambiguous(budget):
            raise ValueError("hybrid.budget=1 is one key per query (whole numbers count keys, decimals are fractions "
                             "of T): for the whole context write hybrid.budget=1.0; for one key, hybrid.top_k=1")
        keys = (Budget.parse(top_k, "hybrid.top_k", mass) if budget is None
                else Budget.parse(budget, "hybrid.budget", mass))
        keys.check(model.seq_len, "hybrid.budget")
        if kernel not in KERNELS:  # its fit with the selector and approximator: SparseParts
            raise ValueError(kernel_problem(kernel, None, None))
        return cls(expand(layers, model.n_layer, "layers"), expand(heads, model.n_head, "heads"), top_k, keys, kernel)

    def pairs(self) -> list[tuple[int, int]]:
        """(layer, head) of every sparse head, in a fixed order: the order of per-head metrics."""
        return [(layer, head) for layer in self.layers for head in self.heads]


def block_problem(selector: nn.Module, budget: Budget, T: int) -> str | None:
    """Why a block selector's ``recent`` blocks cannot be kept under ``budget`` at length T (None: they can): the
    recent blocks come beside the own one, within the budget's blocks."""
    recent = getattr(selector, "recent", 0)
    if not getattr(selector, "whole_blocks", False) or not recent:
        return None
    n = budget.blocks(T, selector.block_size)
    if recent > n - 1:
        return (f"selector.recent={recent} keeps {recent} earlier block{'s' * (recent > 1)} beside the own one, but "
                f"the budget ({budget}) keeps {n} block{'s' * (n > 1)} of {selector.block_size} keys in all at "
                f"T={T}: give selector.recent={n - 1} or less, or a larger hybrid.budget")
    return None


class SparseParts(nn.Module):
    """The new modules of a hybrid: one selector and one approximator per sparse layer (each serving its heads)."""

    def __init__(self, spec: HybridSpec, model: GPTConfig, selector: dict, approximator: dict):
        super().__init__()
        h, sel, app = len(spec.heads), selector_settings(selector), approximator_settings(approximator)
        settings = {k: v for k, v in sel.items() if k != "name"}
        self.selectors = nn.ModuleDict({
            str(layer): build_selector(sel["name"], h, model.d_model, model.head_dim, model.seq_len, **settings)
            for layer in spec.layers
        })
        first = next(iter(self.selectors.values()))
        # keys each query's approximator reads at the model's length: K, or the budget in whole blocks
        slots = spec.budget.keys_read(model.seq_len, first.block_size if first.whole_blocks else None)
        self.approximators = nn.ModuleDict({
            str(layer): build_approximator(app["name"], h, model.head_dim, slots,
                                           **{k: v for k, v in app.items() if k != "name"})
            for layer in spec.layers
        })
        problem = kernel_problem(spec.kernel, first, next(iter(self.approximators.values())), sel["name"],
                                 app["name"], spec.budget) or block_problem(first, spec.budget, model.seq_len)
        if problem:
            raise ValueError(problem)
        if slots >= model.seq_len:  # nothing is dropped: say so, it is rarely what was meant
            T, bs = model.seq_len, getattr(first, "block_size", None)
            why = (f"selector.block_size={bs} is not below T={T}, so one block is the whole context; give a smaller "
                   f"one, e.g. selector.block_size={max(1, T // 8)}" if first.whole_blocks and bs >= T
                   else f"the budget {spec.budget} covers T={T}")
            log.warning("hybrid: every key is kept (%s): the sparse heads compute dense attention, the hybrid is the "
                        "teacher", why)
        self.spec = spec

    def attention(self, layer: int) -> SparseAttention:
        """The sparse heads of ``layer`` as one module (holding this layer's selector and approximator)."""
        return SparseAttention(self.selectors[str(layer)], self.approximators[str(layer)], self.spec.budget,
                               self.spec.kernel)


class HybridCausalSelfAttention(nn.Module):
    """Exact SDPA for the dense heads; ``sparse`` for ``heads``. Same signature as the teacher's attention."""

    def __init__(self, attn: CausalSelfAttention, heads: tuple[int, ...], sparse: SparseAttention):
        super().__init__()
        self.attn, self.sparse = attn, sparse
        self.heads = list(heads)
        self.dense = [h for h in range(attn.n_head) if h not in heads]
        order = self.heads + self.dense  # the cache's head order in generation: the sparse heads first
        self.order = None if order == sorted(order) else order
        self.unorder = None if self.order is None else [order.index(h) for h in range(attn.n_head)]

    def cached(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Generation (src/model.py ``KVCache``): the prompt at position 0, then one token per call. The cache holds
        the sparse heads first, so that each group is a view of it; the sparse heads keep a ``SparseDecoder``
        (their selector's summaries) beside it and read only the keys it chooses."""
        pos, n = cache.pos, len(self.heads)
        q, k, v = self.attn.qkv(x, pos)  # (B, nh, Tn, hs)
        if self.order is not None:
            q, k, v = q[:, self.order], k[:, self.order], v[:, self.order]
        keys, values = cache.append(k, v)
        y = torch.empty_like(q)
        if self.dense:
            y[:, n:] = cached_attention(q[:, n:], keys[:, n:], values[:, n:], pos)
        y[:, :n] = self.sparse.decode(x, q[:, :n], cache)  # the prompt, then one token per call
        return self.attn.merge_heads(y if self.unorder is None else y[:, self.unorder])

    def forward(self, x: torch.Tensor, signals: list | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        if cache is not None:
            return self.cached(x, cache)
        q, k, v = self.attn.qkv(x)  # (B, nh, T, hs)
        return self.attn.merge_heads(mixed_heads(x, q, k, v, self.heads, self.dense, self.sparse))


def mixed_heads(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: list[int],
                dense: list[int], sparse: SparseAttention) -> torch.Tensor:
    """One layer's heads over a whole sequence: ``heads`` through ``sparse``, ``dense`` through causal SDPA. x (B, T,
    C) the layer input; q, k, v (B, nh, T, hs) -> y (B, nh, T, hs). (A Hugging Face model's layers run it too,
    src/hf/hybrid.py.)"""
    if not dense:  # every head sparse: no copy in or out of a head subset
        return sparse(x, q, k, v)
    exact = F.scaled_dot_product_attention(q[:, dense], k[:, dense], v[:, dense], is_causal=True)
    approx = sparse(x, q[:, heads], k[:, heads], v[:, heads])
    y = q.new_empty(q.shape, dtype=torch.promote_types(exact.dtype, approx.dtype))  # under autocast SDPA gives bf16
    y[:, dense], y[:, heads] = exact.to(y.dtype), approx.to(y.dtype)
    return y


def hybrid_attention(teacher: GPT, spec: HybridSpec, parts: SparseParts) -> dict[int, HybridCausalSelfAttention]:
    """The per-layer attention overrides that make ``teacher`` a hybrid: ``teacher(idx, attention=...)``.

    They hold no weights of their own (the teacher's projections and ``parts``' modules), so they need not be
    registered anywhere; ``set_attention`` on a copy of the teacher makes a standalone hybrid model instead.
    """
    return {layer: HybridCausalSelfAttention(teacher.blocks[layer].attn, spec.heads, parts.attention(layer))
            for layer in spec.layers}


def native_attention(cfg: GPTConfig) -> SparseAttention:
    """One natively sparse layer of ``cfg`` (``model.sparse``): every head on MoBA's parameter-free gate, exact
    softmax over the chosen blocks on the block-sparse kernel ``auto`` picks (tiles / query_tiles on the CPU, flex /
    query_flex on CUDA). No weights: the layer's own q and k choose."""
    if Budget.ambiguous(cfg.sparse_budget):
        raise ValueError("model.sparse_budget=1 is one key per query: give keys per query (512) or a fraction of T "
                         "(0.125); for dense attention, model.sparse=none")
    budget = Budget.parse(cfg.sparse_budget, "model.sparse_budget")
    budget.check(cfg.seq_len, "model.sparse_budget")
    selector = build_selector(cfg.sparse, cfg.n_head, cfg.d_model, cfg.head_dim, cfg.seq_len,
                              block_size=cfg.sparse_block)
    slots = budget.keys_read(cfg.seq_len, cfg.sparse_block)
    return SparseAttention(selector, build_approximator("softmax", cfg.n_head, cfg.head_dim, slots), budget)


def build_gpt(cfg: GPTConfig) -> GPT:
    """The model a config describes: a GPT whose ``model.sparse_layers`` are natively sparse when ``model.sparse`` is
    set (ValueError, one line naming the setting, when its settings do not fit). Every stage builds its model here."""
    gpt = GPT(cfg)
    for layer in cfg.sparse_layer_list():
        gpt.blocks[layer].attn.sparse = native_attention(cfg)
    return gpt
