"""What every approximator is (``Approximator``) and the registry its subclasses join by ``name``."""

from __future__ import annotations

import torch.nn as nn

APPROXIMATORS: dict[str, type] = {}  # name -> class


class Approximator(nn.Module):
    """What every approximator is: forward(q, k_sel, v_sel, valid) -> the heads' outputs; ``name`` registers it."""

    name: str | None = None
    trainable = True  # False: nothing to learn (exact softmax)
    exact_softmax = False  # True: a block-sparse kernel (src/sparse/flex.py, tiles.py) may compute it instead
    reads_keys = True  # False: only the selected values (the gather path need not copy the keys)
    cost = None  # cost(T, head_dim, k, sizes) -> src.costs.formulas.Cost of one head; None: not counted

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            APPROXIMATORS[cls.name] = cls
