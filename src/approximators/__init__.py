"""Head approximators (Hydra group ``approximator/``): one file each, one YAML each (conf/approximator/NAME.yaml).

As the selectors (src/selectors/__init__.py): a class with a ``name`` registers itself in ``APPROXIMATORS`` when its
module is imported (every module here is), and ``build_approximator`` gives it what its ``__init__`` asks for.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch.nn as nn

from src.approximators.base import APPROXIMATORS, Approximator
from src.config import approximator_settings

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_approximator(name: str, n_heads: int, head_dim: int, top_k: int, **settings) -> nn.Module:
    """One approximator serving ``n_heads`` heads over ``top_k`` selected keys: the class registered as ``name``,
    given what its ``__init__`` asks for (``settings``: conf/approximator/NAME.yaml's keys over src/config.py's
    defaults)."""
    if name not in APPROXIMATORS:
        raise ValueError(f"approximator.name={name!r} is unknown: use one of {', '.join(APPROXIMATORS)}")
    cls = APPROXIMATORS[name]
    values = {**approximator_settings(settings), "n_heads": n_heads, "head_dim": head_dim, "top_k": top_k}
    return cls(**{p: values[p] for p in inspect.signature(cls.__init__).parameters if p in values})


__all__ = ["APPROXIMATORS", "Approximator", "build_approximator"]
