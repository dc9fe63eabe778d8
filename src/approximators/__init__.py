"""Head approximators (Hydra group ``approximator/``): one file each. ``build_approximator`` makes one."""

from __future__ import annotations

import torch.nn as nn

from src.approximators.mlp import MLPApproximator
from src.approximators.softmax import SoftmaxApproximator

APPROXIMATORS = {"mlp": MLPApproximator, "softmax": SoftmaxApproximator}


def build_approximator(name: str, n_heads: int, head_dim: int, top_k: int, hidden: int) -> nn.Module:
    """One approximator serving ``n_heads`` heads over ``top_k`` selected keys; sizes from conf/approximator/."""
    if name == "mlp":
        return MLPApproximator(n_heads, head_dim, top_k, hidden)
    if name == "softmax":
        return SoftmaxApproximator()
    raise ValueError(f"approximator.name={name!r} is unknown: use one of {', '.join(APPROXIMATORS)}")


__all__ = ["APPROXIMATORS", "build_approximator"]
