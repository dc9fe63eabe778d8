"""The teacher's attention mass per (query block, key block): the block-level distillation target.

SeerAttention and DeepSeek V3.2 train their gates / indexers towards the attention distribution pooled to the
level at which they select; for a block selector that is, per block of queries, the attention mass its queries put
on each key block. It is computed from the teacher's q and k, ``chunk`` query rows at a time, so a long T never
needs the whole T × T attention map at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from src.sparse.choice import n_blocks

CHUNK = 1024  # query rows per step (rounded down to whole blocks)


def key_block_mass(probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """Attention (..., T) -> its mass on each key block (..., nb), the last block over its own keys only."""
    T = probs.size(-1)
    return F.pad(probs, (0, n_blocks(T, block_size) * block_size - T)).unflatten(-1, (-1, block_size)).sum(-1)


def block_attention_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, chunk: int = CHUNK) -> torch.Tensor:
    """q, k (B, h, T, hs) -> (B, h, R, nb): sum over the queries of query block r of their causal softmax attention
    on the keys of block c (zero for c > r). Each row sums to the number of queries in its block."""
    B, h, T, hs = q.shape
    step = max(block_size, chunk // block_size * block_size)
    out = []
    for start in range(0, T, step):
        end = min(start + step, T)
        scores = q[:, :, start:end] @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, h, rows, T)
        future = torch.arange(T, device=q.device) > torch.arange(start, end, device=q.device)[:, None]
        probs = scores.masked_fill(future, float("-inf")).softmax(-1)
        probs = key_block_mass(probs, block_size)  # (B, h, rows, nb)
        rows = n_blocks(end - start, block_size)
        probs = F.pad(probs, (0, 0, 0, rows * block_size - (end - start)))
        out.append(probs.unflatten(2, (rows, block_size)).sum(3))  # (B, h, rows // bs, nb)
    return torch.cat(out, dim=2)
