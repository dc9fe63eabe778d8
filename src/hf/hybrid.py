"""One layer of a Hugging Face model made hybrid: the sparse heads through SparseAttention, the others through SDPA,
over the q, k, v the registered attention function hands over (src/hf/attention.py) -- the same split of heads as
the project's own hybrid (src/hybrid.py ``mixed_heads``), and in generation the same sparse decoder."""

from __future__ import annotations

import torch
import torch.nn as nn

from src.hf.cache import HFCache
from src.hybrid import mixed_heads
from src.model import cached_attention
from src.sparse import SparseAttention


class HFHybridLayer(nn.Module):
    """``heads`` of one layer through ``sparse``; the other of its ``n_head`` heads exact. No weights of its own (the
    model's projections and the sparse parts')."""

    def __init__(self, n_head: int, heads: tuple[int, ...], sparse: SparseAttention):
        super().__init__()
        self.sparse, self.heads = sparse, list(heads)
        self.dense = [h for h in range(n_head) if h not in heads]

    def forward(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A whole sequence: x (B, T, C) the layer input, q, k, v (B, nh, T, hs) -> y (B, nh, T, hs)."""
        return mixed_heads(x, q, k, v, self.heads, self.dense, self.sparse)

    def decode(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: HFCache,
               layer: int) -> torch.Tensor:
        """Generation: q (B, nh, Tn, hs) of the new tokens at positions cache.pos.., k, v (B, nh, pos + Tn, hs) every
        key and value so far (the model's own cache) -> y (B, nh, Tn, hs). The dense heads read every key; the sparse
        heads keep their keys in a buffer of the model's T beside it, where the sparse decoder (src/sparse/decode.py)
        reads only the ones it chooses: the prompt as one pass, then one token per call."""
        pos, Tn = cache.pos, q.size(-2)
        y = torch.empty_like(q)
        if self.dense:
            d = self.dense
            y[:, d] = cached_attention(q[:, d], k[:, d], v[:, d], pos)
        s = self.heads
        served = cache.served(layer, q[:, s])
        served.append(k[:, s, pos:], v[:, s, pos:])
        y[:, s] = self.sparse.decode(x, q[:, s], served)
        served.pos += Tn
        return y
