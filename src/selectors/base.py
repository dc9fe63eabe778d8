"""What every key selector shares: causal top-K over its scores, and gathering the selected keys and values.

A selector scores every (query, key) pair of the heads it serves, shape (B, h, T, T). Keys after the query are
masked out *before* top-K, so no selector can ever pick a future key: query i chooses among keys 0..i, and when it
has fewer than K of them (i + 1 < K) the surplus slots are marked invalid and point at the query itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Selection:
    idx: torch.Tensor  # (B, h, T, K) selected key positions, best first; always <= the query position
    valid: torch.Tensor  # (B, h, T, K) bool: False for the slots of queries with fewer than K earlier keys


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where the key is after the query (must never be attended or selected)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


def causal_topk(scores: torch.Tensor, top_k: int, rows: torch.Tensor | None = None) -> Selection:
    """Top-K keys of each query i among keys 0..i. scores (B, h, R, T) of the queries at positions ``rows`` (R,);
    None: all T queries (R = T). -> Selection (B, h, R, K)."""
    T = scores.size(-1)
    if not 0 < top_k <= T:
        raise ValueError(f"top_k={top_k} must be in 1..{T} (the sequence length)")
    pos = torch.arange(T, device=scores.device) if rows is None else rows  # (R,)
    lowest = torch.finfo(scores.dtype).min  # earlier keys stay above the -inf of future keys, even at -inf or NaN
    finite = torch.nan_to_num(scores, nan=lowest, neginf=lowest, posinf=torch.finfo(scores.dtype).max)
    future = torch.arange(T, device=scores.device) > pos[:, None]  # (R, T)
    idx = finite.masked_fill(future, float("-inf")).topk(top_k, dim=-1).indices  # (B, h, R, K)
    valid = torch.arange(top_k, device=scores.device) <= pos[:, None]  # (R, K): query i has i + 1 keys
    idx = torch.where(valid, idx, pos[:, None])  # surplus slots point at the query itself
    return Selection(idx=idx, valid=valid.expand_as(idx))


def gather_keys(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of t (B, h, T, hs) at idx (B, h, T, K) -> (B, h, T, K, hs), without materialising T x T."""
    B, h, T, K = idx.shape
    flat = idx.reshape(B, h, T * K, 1).expand(-1, -1, -1, t.size(-1))
    return torch.gather(t, 2, flat).view(B, h, T, K, t.size(-1))


def selection_mask(sel: Selection, T: int) -> torch.Tensor:
    """(B, h, T, T) bool: True at the selected (valid) keys of each query."""
    counts = torch.zeros(*sel.idx.shape[:-1], T, dtype=torch.int32, device=sel.idx.device)
    return counts.scatter_add_(-1, sel.idx, sel.valid.int()) > 0  # add, so invalid slots cannot unset a key


class KeySelector(nn.Module):
    """Base class: subclasses implement ``scores``; ``select`` turns them into a causal top-K selection."""

    trainable = True  # False for selectors with nothing to learn (the oracle)
    default_loss = "kl"  # the distillation loss used when selector.loss is not set

    def scores(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) the layer's input; q, k (B, h, T, hs) of the served heads -> scores (B, h, T, T)."""
        raise NotImplementedError

    def select(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, top_k: int) -> Selection:
        return causal_topk(self.scores(x, q, k), top_k)
