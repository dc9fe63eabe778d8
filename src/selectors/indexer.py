"""A content-based selector in the spirit of DeepSeek-V3.2's lightning indexer.

Per served head, small learned projections of the layer input give index queries and keys of width d_index
(default 16, against the head's 32-64): score(i, j) = q_i · k_j / sqrt(d_index). It is distilled with KL divergence
towards the teacher's attention distribution, costs Θ(T² · d_index) per head instead of attention's Θ(T² · head_dim),
and works at any length up to the model's block size because it reads content, not positions -- plus a learned bias
per distance bucket (src/selectors/distance.py), so that it can prefer recent keys.
(DeepSeek's indexer uses ReLU-weighted index heads and one selection shared by all heads; here each head selects.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.selectors.base import KeySelector
from src.selectors.distance import DistanceBias


def index_vectors(w: nn.Linear, x: torch.Tensor, n_heads: int, d_index: int) -> torch.Tensor:
    """(B, R, C) -> (B, h, R, d_index): one learned index vector per served head (also the block selector's)."""
    B, R, _ = x.shape
    return w(x).view(B, R, n_heads, d_index).transpose(1, 2)


class IndexerSelector(KeySelector):
    default_loss = "kl"

    def __init__(self, n_heads: int, d_model: int, d_index: int):
        super().__init__()
        self.n_heads, self.d_index = n_heads, d_index
        self.wq = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.wk = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.distance = DistanceBias(n_heads)

    def prepare(self, x, q, k):
        """Index queries and keys of every position, (B, h, T, d_index) each."""
        return (index_vectors(self.wq, x, self.n_heads, self.d_index),
                index_vectors(self.wk, x, self.n_heads, self.d_index))

    def score_rows(self, ctx, rows):
        qi, ki = ctx
        scores = qi[:, :, rows] @ ki.transpose(-2, -1) / math.sqrt(self.d_index)  # (B, h, R, T)
        return scores + self.distance(rows, ki.size(-2))
