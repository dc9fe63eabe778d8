"""Quest's criticality estimate (Tang et al., 2024), per query: each query bounds what every earlier key block can
give it -- per channel, the block's largest and smallest key (the head's own k, after rope), so that
sum_c max(q_c * kmax_c, q_c * kmin_c) >= q . k_j for every key j of the block -- and keeps its own block and the
blocks of the highest bounds. Nothing to learn; where MoBA's gate scores a block by its *mean* key, which one
needle key among 63 others barely moves, the bound rises with any one key that matches the query.

Causal as ``query_moba``: the blocks a query may pick lie wholly before its own block, whose score (read only by the
dynamic budget) is the query against its own key. Run by the per-query kernels (``query_tiles``, ``query_flex``);
generation asks the bounds again over the cached keys. Θ(T · T/B · hs) per head to score, twice MoBA's gate.
"""

from __future__ import annotations

import math

import torch

from src.costs import formulas as costs
from src.selectors.moba import QueryMobaGate, own_scores
from src.sparse.choice import n_blocks


def key_bounds(k: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, h, T, hs) -> every block's per-channel largest and smallest key (B, h, nb, hs) each, the last block over
    its own rows only."""
    B, h, T, hs = k.shape
    pad = n_blocks(T, block_size) * block_size - T
    blocks = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("nan")).unflatten(2, (-1, block_size))
    return blocks.nan_to_num(float("-inf")).amax(3), blocks.nan_to_num(float("inf")).amin(3)


def bound_scores(q: torch.Tensor, kmax: torch.Tensor, kmin: torch.Tensor, upto: int | None = None) -> torch.Tensor:
    """Queries q (B, h, R, d) against every block's per-channel key bounds (B, h, nb, d) -- only the first ``upto``
    blocks' -> the bounds of their logits, sum_c max(q_c * kmax_c, q_c * kmin_c), (B, h, R, nb or upto), unscaled."""
    kmax, kmin = kmax[..., :upto, :], kmin[..., :upto, :]
    return (q.clamp(min=0) @ kmax.transpose(-2, -1)).add_(q.clamp(max=0) @ kmin.transpose(-2, -1))


class QuestSelector(QueryMobaGate):
    name = "quest"
    trainable = False

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Per-block key bounds and every query's two scores, one head (src/costs/formulas.py quest_gate)."""
        return costs.quest_gate(T, head_dim, sizes.block, topk_ops=sizes.topk_ops)

    def prepare(self, x, q, k):
        return x, q, k, *key_bounds(k, self.block_size)

    def block_rows(self, ctx, rows, upto=None):
        """Every query ``rows`` (R,) against every block's bound (the first ``upto``) -> (B, h, R, nb)."""
        x, q, k, kmax, kmin = ctx
        scores = bound_scores(q[:, :, rows], kmax, kmin, upto)
        return own_scores(scores / math.sqrt(q.size(-1)), q, k, rows, rows // self.block_size)
