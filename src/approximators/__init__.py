"""Head approximators (Hydra group ``approximator/``): one file each, one YAML each (conf/approximator/NAME.yaml).

As the selectors (src/selectors/__init__.py): a class with a ``name`` registers itself in ``APPROXIMATORS`` when its
module is imported (every module here is), and ``build_approximator`` gives it what its ``__init__`` asks for.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import asdict

import torch.nn as nn

APPROXIMATORS: dict[str, type] = {}  # name -> class


class Approximator(nn.Module):
    """What every approximator is: forward(q, k_sel, v_sel, valid) -> the heads' outputs; ``name`` registers it."""

    name: str | None = None
    trainable = True  # False: nothing to learn (exact softmax)
    exact_softmax = False  # True: a block-sparse kernel (src/sparse/flex.py, tiles.py) may compute it instead
    reads_keys = True  # False: only the selected values (the gather path need not copy the keys)
    cost = None  # cost(T, head_dim, k, sizes) -> src.costs.Cost of one head; None: not counted

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            APPROXIMATORS[cls.name] = cls


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_approximator(name: str, n_heads: int, head_dim: int, top_k: int, **settings) -> nn.Module:
    """One approximator serving ``n_heads`` heads over ``top_k`` selected keys: the class registered as ``name``,
    given what its ``__init__`` asks for (``settings``: conf/approximator/NAME.yaml's keys over src/config.py's
    defaults)."""
    from src.config import ApproximatorConf

    if name not in APPROXIMATORS:
        raise ValueError(f"approximator.name={name!r} is unknown: use one of {', '.join(APPROXIMATORS)}")
    cls = APPROXIMATORS[name]
    values = {**asdict(ApproximatorConf()), **settings, "n_heads": n_heads, "head_dim": head_dim, "top_k": top_k}
    return cls(**{p: values[p] for p in inspect.signature(cls.__init__).parameters if p in values})


__all__ = ["APPROXIMATORS", "Approximator", "build_approximator"]
