"""A content-based selector in the spirit of DeepSeek-V3.2's lightning indexer.

Per served head, small learned projections of the layer input give index queries and keys of width d_index
(default 16, against the head's 32-64): score(i, j) = q_i · k_j / sqrt(d_index). It is distilled with KL divergence
towards the teacher's attention distribution, costs Θ(T² · d_index) per head instead of attention's Θ(T² · head_dim),
and works at any length up to the model's block size because it reads content, not positions -- plus a learned bias
per distance bucket (src/selectors/distance.py), so that it can prefer recent keys.
At generation (src/sparse/decode.py) the index keys of the tokens so far are cached (d_index numbers per key and
head), and each new token scores them all.
(DeepSeek's indexer uses ReLU-weighted index heads and one selection shared by all heads; here each head selects.)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.costs import formulas as costs
from src.selectors.base import KeySelector
from src.selectors.distance import DistanceBias


def index_vectors(w: nn.Linear, x: torch.Tensor, n_heads: int, d_index: int) -> torch.Tensor:
    """(B, R, C) -> (B, h, R, d_index): one learned index vector per served head (also the block selector's)."""
    B, R, _ = x.shape
    return w(x).view(B, R, n_heads, d_index).transpose(1, 2)


class IndexerSelector(KeySelector):
    name = "indexer"

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Scoring every query of one head, Θ(T²·d_index) (src/costs/formulas.py indexer_selector)."""
        return costs.indexer_selector(T, d_model, sizes.d_index, sizes.topk_ops)

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

    # ------------------------------------------------------------------ generation: cached index keys

    def summarise(self, x: torch.Tensor, max_len: int) -> torch.Tensor:
        """The prompt's layer input x (B, T0, C) -> its index keys in a buffer for ``max_len`` positions (B, h,
        max_len, d_index)."""
        ki = index_vectors(self.wk, x, self.n_heads, self.d_index)
        buf = ki.new_zeros(*ki.shape[:2], max_len, self.d_index)
        buf[:, :, :x.size(1)] = ki
        return buf

    def add_summary(self, keys: torch.Tensor, x_t: torch.Tensor, t: int) -> None:
        keys[:, :, t] = index_vectors(self.wk, x_t, self.n_heads, self.d_index)[:, :, 0]

    def summary_scores(self, keys: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """score_rows of the query x_t (B, 1, C) at position t against the cached keys 0..t -> (B, h, 1, t + 1)."""
        qi = index_vectors(self.wq, x_t, self.n_heads, self.d_index)
        scores = qi @ keys[:, :, :t + 1].transpose(-2, -1) / math.sqrt(self.d_index)
        return scores + torch.cat((self.distance.before(t), self.distance.bias[:, :1]), -1)[:, None]
