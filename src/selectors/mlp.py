"""The prototype's KeySelector: an MLP from a head's query vector to logits over absolute key positions.

``Linear(head_dim -> hidden) -> ReLU -> Linear(hidden -> seq_len)``, one per served head, trained to predict the
teacher's top-1 key (cross-entropy), optionally its top-K set (multi-label) or its whole attention row (KL).
It scores *positions*, not content: the output layer alone costs T x hidden x T per head (Θ(T²)), and it is tied
to the sequence length it was built for. Unlike the prototype, future positions are masked before top-K.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.costs import formulas as costs
from src.selectors.base import KeySelector


class MLPSelector(KeySelector):
    name = "mlp"
    default_loss = "ce"

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Scoring every query of one head, Θ(T²·hidden) (src/costs/formulas.py mlp_selector)."""
        return costs.mlp_selector(T, head_dim, sizes.selector_hidden, sizes.topk_ops)

    def __init__(self, n_heads: int, head_dim: int, seq_len: int, hidden: int):
        super().__init__()
        self.seq_len = seq_len
        self.w1 = nn.Parameter(torch.empty(n_heads, head_dim, hidden))  # per-head Linear(head_dim -> hidden)
        self.b1 = nn.Parameter(torch.zeros(n_heads, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(n_heads, hidden, seq_len))  # per-head Linear(hidden -> seq_len)
        self.b2 = nn.Parameter(torch.zeros(n_heads, 1, seq_len))
        for w in (self.w1, self.w2):  # nn.Linear's default scale
            nn.init.uniform_(w, -1 / math.sqrt(w.size(1)), 1 / math.sqrt(w.size(1)))

    def prepare(self, x, q, k):
        """The hidden layer of every query, (B, h, T, hidden)."""
        return torch.relu(torch.einsum("bhtd,hde->bhte", q, self.w1) + self.b1)

    def score_rows(self, ctx, rows):
        T = ctx.size(-2)
        return (torch.einsum("bhte,hes->bhts", ctx[:, :, rows], self.w2) + self.b2)[..., :T]  # (B, h, R, T)
