"""The dense references every sparse path is measured against: SDPA (fused, never stores T × T) and the
materialised causal softmax(QKᵀ/√hs)V."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.model import causal_attention_probs


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA, (B, h, T, hs) -> (B, h, T, hs): the baseline of every speed-up."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The (B, h, T, T) probabilities materialised, then weighted: what SDPA saves."""
    return causal_attention_probs(q, k) @ v
