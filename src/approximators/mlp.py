"""The prototype's HeadApproximator: an MLP from the concatenated selected value vectors to the head's output.

``Linear(top_k * head_dim -> hidden) -> ReLU -> Linear(hidden -> head_dim)``, one per served head, trained with MSE
to the teacher's head output. It never looks at the query or the keys: the selection order carries all it knows.
Slots a query does not have (fewer than K earlier keys) are zeroed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.approximators.base import Approximator
from src.costs import formulas as costs


class MLPApproximator(Approximator):
    name = "mlp"
    trainable = True
    reads_keys = False  # only the selected values: the gather path need not copy the keys

    @staticmethod
    def cost(T: int, head_dim: int, k: int, sizes):
        """One head over k selected values of every query (src/costs/formulas.py mlp_approximator)."""
        return costs.mlp_approximator(T, head_dim, k, sizes.approximator_hidden)

    def __init__(self, n_heads: int, head_dim: int, top_k: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_heads, top_k * head_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_heads, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(n_heads, hidden, head_dim))
        self.b2 = nn.Parameter(torch.zeros(n_heads, 1, head_dim))
        for w in (self.w1, self.w2):  # nn.Linear's default scale
            nn.init.uniform_(w, -1 / math.sqrt(w.size(1)), 1 / math.sqrt(w.size(1)))

    def forward(self, q, k_sel, v_sel, valid):
        """q (B, h, T, hs); k_sel, v_sel (B, h, T, K, hs); valid (B, h, T, K) -> (B, h, T, hs)."""
        B, h, T, K, hs = v_sel.shape
        flat = (v_sel * valid[..., None]).reshape(B, h, T, K * hs)
        hidden = torch.relu(torch.einsum("bhti,hie->bhte", flat, self.w1) + self.b1)
        return torch.einsum("bhte,heo->bhto", hidden, self.w2) + self.b2
