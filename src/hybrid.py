"""HybridCausalSelfAttention: a drop-in for the teacher's attention that is sparse in chosen heads.

For each sparse head a selector picks, per query, top_k earlier keys and an approximator turns the selected
keys and values into the head's output; the other heads stay exact (SDPA). The hybrid reuses the teacher's own
Q/K/V and output projections, so only the selector and approximator are new.

Which layers and heads are sparse is a ``HybridSpec`` (config ``hybrid.layers``, ``hybrid.heads``: a list or
``all``); the default, as in the prototype, is layer 0, head 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.approximators import build_approximator
from src.model import GPT, CausalSelfAttention, GPTConfig
from src.selectors import Selection, build_selector, gather_keys


@dataclass(frozen=True)
class HybridSpec:
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    top_k: int

    @classmethod
    def from_config(cls, layers, heads, top_k: int, model: GPTConfig) -> HybridSpec:
        """Validate ``hybrid.*`` against the model; ``all`` expands to every layer / head."""

        def expand(value, n: int, what: str) -> tuple[int, ...]:
            if value == "all":
                return tuple(range(n))
            items = [value] if isinstance(value, int) else list(value)
            if not items or any(not isinstance(i, int) or not 0 <= i < n for i in items):
                raise ValueError(f"hybrid.{what}={value} must be 'all' or a list of indices in 0..{n - 1}")
            return tuple(sorted(set(items)))

        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"hybrid.top_k={top_k} must be a positive number of keys")
        if top_k > model.seq_len:
            raise ValueError(f"hybrid.top_k={top_k} is larger than the sequence length model.seq_len={model.seq_len}")
        return cls(expand(layers, model.n_layer, "layers"), expand(heads, model.n_head, "heads"), top_k)

    def pairs(self) -> list[tuple[int, int]]:
        """(layer, head) of every sparse head, in a fixed order: the order of per-head metrics."""
        return [(layer, head) for layer in self.layers for head in self.heads]


class SparseParts(nn.Module):
    """The new modules of a hybrid: one selector and one approximator per sparse layer (each serving its heads)."""

    def __init__(self, spec: HybridSpec, model: GPTConfig, selector: dict, approximator: dict):
        super().__init__()
        h = len(spec.heads)
        self.selectors = nn.ModuleDict(
            {
                str(layer): build_selector(
                    selector["name"], h, model.d_model, model.head_dim, model.seq_len,
                    hidden=selector.get("hidden", 64), d_index=selector.get("d_index", 16),
                    block_size=selector.get("block_size", 16),
                )
                for layer in spec.layers
            }
        )
        self.approximators = nn.ModuleDict(
            {
                str(layer): build_approximator(
                    approximator["name"], h, model.head_dim, spec.top_k, hidden=approximator.get("hidden", 64)
                )
                for layer in spec.layers
            }
        )


class HybridCausalSelfAttention(nn.Module):
    """Exact SDPA for the dense heads; selector + approximator for ``heads``. Same signature as the teacher's."""

    def __init__(self, attn: CausalSelfAttention, heads: tuple[int, ...], selector: nn.Module,
                 approximator: nn.Module, top_k: int):
        super().__init__()
        self.attn, self.selector, self.approximator = attn, selector, approximator
        self.heads, self.top_k = list(heads), top_k
        self.dense = [h for h in range(attn.n_head) if h not in heads]
        self.last_selection: Selection | None = None  # kept when ``record`` is set, for pictures and metrics
        self.record = False

    def forward(self, x: torch.Tensor, signals: list | None = None) -> torch.Tensor:
        q, k, v = self.attn.qkv(x)  # (B, nh, T, hs)
        y = torch.empty_like(q)
        if self.dense:
            d = self.dense
            y[:, d] = F.scaled_dot_product_attention(q[:, d], k[:, d], v[:, d], is_causal=True)
        s = self.heads
        qs, ks, vs = q[:, s], k[:, s], v[:, s]  # (B, h, T, hs)
        sel = self.selector.select(x, qs, ks, self.top_k)
        y[:, s] = self.approximator(qs, gather_keys(ks, sel.idx), gather_keys(vs, sel.idx), sel.valid)
        if self.record:
            self.last_selection = sel
        return self.attn.merge_heads(y)


def hybrid_attention(teacher: GPT, spec: HybridSpec, parts: SparseParts) -> dict[int, HybridCausalSelfAttention]:
    """The per-layer attention overrides that make ``teacher`` a hybrid: ``teacher(idx, attention=...)``.

    They hold no weights of their own (the teacher's projections and ``parts``' modules), so they need not be
    registered anywhere; ``set_attention`` on a copy of the teacher makes a standalone hybrid model instead.
    """
    return {
        layer: HybridCausalSelfAttention(
            teacher.blocks[layer].attn, spec.heads, parts.selectors[str(layer)],
            parts.approximators[str(layer)], spec.top_k,
        )
        for layer in spec.layers
    }
