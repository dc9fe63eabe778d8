"""Small shapes and builders the library's tests share (sparse/, selectors/)."""

from __future__ import annotations

import torch

from src.approximators import build_approximator
from src.selectors import build_selector
from src.sparse import (
    BlockChoice,
    Budget,
    SparseAttention,
    causal_block_topk,
    n_blocks,
    selection_mask,
)

H, HS, D = 2, 16, 32  # heads, head size, layer width of the kernels' tiny shapes (flex compiles once per shape)
T = 32  # the selectors' tiny sequence length (with layer width 16, head size 8)


def qkv(B: int, T: int, seed: int = 0):
    """x (B, T, D) and q, k, v (B, H, T, HS), random."""
    torch.manual_seed(seed)
    return torch.randn(B, T, D), *(torch.randn(B, H, T, HS) for _ in range(3))


def random_choice(B: int, T: int, bs: int, n: int, seed: int = 0) -> BlockChoice:
    """A causal block choice of n blocks of bs keys from random scores."""
    torch.manual_seed(seed)
    nb = n_blocks(T, bs)
    return causal_block_topk(torch.randn(B, H, nb, nb), n, torch.arange(nb), bs, T)


def exact_on_choice(q, k, v, choice: BlockChoice) -> torch.Tensor:
    """The reference: softmax over the chosen blocks' causal keys, from the materialised probabilities."""
    keep = selection_mask(choice.keys(), q.size(-2))  # (B, h, T, T)
    scores = q @ k.transpose(-2, -1) / HS**0.5
    return scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v


def block_attention(kernel: str, bs: int = 16, budget: float | int = 1.0, approximator: str = "softmax"):
    """SparseAttention of a random block selector over T = 64 on ``kernel``."""
    torch.manual_seed(1)
    selector = build_selector("block", H, D, HS, 64, hidden=8, d_index=4, block_size=bs, sinks=4)
    slots = Budget.parse(budget).keys_read(64, bs)
    return SparseAttention(selector, build_approximator(approximator, H, HS, slots, hidden=8), Budget.parse(budget),
                           kernel)


def make(name: str, block_size: int = 4, sinks: int = 2):
    """Any selector at the tiny shape (H heads, width 16, head size 8, T)."""
    return build_selector(name, H, 16, 8, T, hidden=8, d_index=4, block_size=block_size, sinks=sinks)


def chosen_keys(sel, b=0, h=0) -> list[set[int]]:
    """The valid keys of each query, as sets."""
    return [set(sel.idx[b, h, i][sel.valid[b, h, i]].tolist()) for i in range(sel.idx.size(2))]


def chosen_blocks(choice, b=0, h=0) -> list[set[int]]:
    """The valid blocks of each query block, as sets."""
    return [set(choice.idx[b, h, r][choice.valid[b, h, r]].tolist()) for r in range(choice.idx.size(2))]
