"""MoBA's gate, parameter-free: each query scores the earlier key blocks by its own query against the block's mean
key (the head's own q and k, after rope) and keeps its own block and the best earlier ones -- nothing to learn, so a
model can be trained sparse from its first step (``model.sparse``, src/model.py) and a dense teacher can be read
through it without distillation (a baseline beside the learned ``block`` and ``query_block``).

* ``moba`` -- one choice per block of queries, made by the block's *first* query (as the learned ``block``
  selector chooses): the mean keys of the earlier blocks are complete before it, so nothing it reads lies after any
  query of its block. The block-sparse kernels run it (``tiles`` on the CPU, ``flex`` on CUDA) -- the fast one.
* ``query_moba`` -- MoBA's own rule: *every* query chooses (src/sparse/choice.py QueryBlockChoice), run by the
  per-query kernels (``query_tiles``, ``query_flex``).

The own block is always kept (causally masked inside); its score, which only the dynamic budget (``hybrid.mass``)
reads, is the query against its own key -- the own block's mean would read later keys. Generation
(src/sparse/decode.py) asks the gate again over the cached keys: the same choice as one forward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.costs import formulas as costs
from src.selectors.base import BlockKeySelector
from src.selectors.query_block import QueryBlockSelector, check_blocks
from src.sparse.choice import n_blocks


def mean_keys(k: torch.Tensor, block_size: int) -> torch.Tensor:
    """k (B, h, T, hs) -> the mean key of every block (B, h, nb, hs); the last block over its own rows only."""
    B, h, T, hs = k.shape
    nb = n_blocks(T, block_size)
    sums = torch.nn.functional.pad(k, (0, 0, 0, nb * block_size - T)).unflatten(2, (nb, block_size)).sum(3)
    count = (T - torch.arange(nb, device=k.device) * block_size).clamp(max=block_size)
    return sums / count[:, None].to(k.dtype)


def own_scores(scores: torch.Tensor, q: torch.Tensor, k: torch.Tensor, queries: torch.Tensor,
               own_blocks: torch.Tensor) -> torch.Tensor:
    """Write each row's own-block score -- its query against its own key, q·k/√hs -- into scores (B, h, R, nb) at
    column ``own_blocks`` (R,): what the dynamic budget reads as the own block's share."""
    own = (q[:, :, queries] * k[:, :, queries]).sum(-1, keepdim=True) / math.sqrt(q.size(-1))  # (B, h, R, 1)
    B, h, R, _ = scores.shape
    return scores.scatter_(-1, own_blocks.view(1, 1, R, 1).expand(B, h, R, 1), own)


class MobaGate(BlockKeySelector):
    name = "moba"
    trainable = False  # nothing to learn: the head's own q and k choose

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Mean keys and the first queries' scores, one head (src/costs/formulas.py moba_gate)."""
        return costs.moba_gate(T, head_dim, sizes.block, per_query=False, topk_ops=sizes.topk_ops)

    def __init__(self, block_size: int, recent: int = 0):
        super().__init__(block_size, recent)

    def block_scores(self, x, q, k, rows):
        """The first query of each query block ``rows`` (R,) against every block's mean key -> (B, h, R, nb)."""
        first = rows * self.block_size
        scores = q[:, :, first] @ mean_keys(k, self.block_size).transpose(-2, -1) / math.sqrt(q.size(-1))
        return own_scores(scores, q, k, first, rows)


class QueryMobaGate(QueryBlockSelector):
    name = "query_moba"
    trainable = False

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Mean keys and every query's scores, one head (src/costs/formulas.py moba_gate)."""
        return costs.moba_gate(T, head_dim, sizes.block, per_query=True, topk_ops=sizes.topk_ops)

    def __init__(self, block_size: int, recent: int = 0):  # no weights: QueryBlockSelector's checks only
        nn.Module.__init__(self)
        self.block_size, self.recent, self.pieces = check_blocks(block_size, recent)

    def prepare(self, x, q, k):
        return x, q, k, mean_keys(k, self.block_size)

    def block_rows(self, ctx, rows, upto=None):
        """Every query ``rows`` (R,) against every block's mean key (the first ``upto``) -> (B, h, R, nb)."""
        x, q, k, kb = ctx
        scores = q[:, :, rows] @ kb[..., :upto, :].transpose(-2, -1) / math.sqrt(q.size(-1))
        return own_scores(scores, q, k, rows, rows // self.block_size)
