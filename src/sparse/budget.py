"""Key budgets: how many keys each query may read, fixed or as a fraction of the sequence length.

The peers keep a *fixed* budget (DeepSeek V3.2's indexer: 2048 tokens; NSA: 16 blocks of 64 + a 512 window; MoBA:
top-k blocks), so the saving grows with T: a causal query sees T/2 keys on average, so a budget of b keys does at
most T / (2b) times less attention work. A fraction of T (k = T/8, the prototype's and src/costs/accounting.py's
default) caps the saving at 1 / (2 · fraction) at every length.

``Budget.parse(512)`` keeps 512 keys per query; ``Budget.parse(0.125)`` keeps T/8. Block selectors round the
budget up to whole blocks, the query's own block included (``blocks``).

The dynamic budget (the prototype's "dynamic K"): with ``mass=0.9`` each query (block of queries) keeps only the
fewest of its best keys (blocks) whose *predicted* attention -- the softmax of the selector's scores -- reaches 90 %,
never more than the budget (src/sparse/selection.py ``within_mass``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from src.sparse.choice import n_blocks


@dataclass(frozen=True)
class Budget:
    value: int | float  # int >= 1: keys per query; float in (0, 1]: that fraction of the sequence length
    mass: float | None = None  # dynamic budget: the share of predicted attention to keep; None: the whole budget

    @classmethod
    def parse(cls, value, what: str = "hybrid.budget", mass=None) -> Budget:
        """A budget from a setting: an int number of keys, or a float fraction of T, and the dynamic budget's
        ``mass`` (hybrid.mass); ValueError naming the setting."""
        if mass is not None and (isinstance(mass, bool) or not isinstance(mass, (int, float))
                                 or not 0 < mass <= 1):
            raise ValueError(f"hybrid.mass={mass!r} must be a share of the predicted attention in (0, 1], e.g. 0.9 "
                             "(or unset: always the whole budget)")
        mass = None if mass is None else float(mass)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{what}={value!r} must be a positive number of keys per query (e.g. 512) or a "
                             "fraction of the sequence length in (0, 1] (e.g. 0.125)")
        if isinstance(value, float):
            if value.is_integer() and value > 1:
                return cls(int(value), mass)  # 512.0 from a YAML or a command line: 512 keys
            if value > 1:
                raise ValueError(f"{what}={value!r}: a fraction of the sequence length must be in (0, 1]; give a "
                                 "whole number for a fixed number of keys")
        return cls(value, mass)

    @property
    def fixed(self) -> bool:
        return isinstance(self.value, int)

    def keys(self, T: int) -> int:
        """Keys per query at length T (at least 1, at most T)."""
        return min(T, self.value) if self.fixed else max(1, min(T, round(self.value * T)))

    def blocks(self, T: int, block_size: int) -> int:
        """Blocks per block of queries: the budget rounded up to whole blocks, own block included, at most all."""
        return min(n_blocks(T, block_size), max(1, n_blocks(self.keys(T), block_size)))

    def keys_read(self, T: int, block_size: int | None = None) -> int:
        """Keys each query's approximator reads at length T: the budget, or for a selector that keeps whole blocks
        of ``block_size`` keys the budget in whole blocks -- the width of their selection, which may pass T when
        the last block is short (its missing keys are invalid slots): the one rule of the hybrid, the benchmark and
        the cost model."""
        return self.keys(T) if block_size is None else self.blocks(T, block_size) * block_size

    @staticmethod
    def ambiguous(value) -> bool:
        """A budget of 1 written as a whole number: one key per query, where 1.0 is the whole context -- a setting to
        refuse with both meanings named (hybrid.budget, the benchmark's --budgets)."""
        return value == 1 and isinstance(value, int) and not isinstance(value, bool)

    def check(self, T: int, what: str = "hybrid.budget") -> None:
        """A fixed budget larger than the sequence length is a mistake, not a dense layer: ValueError."""
        if self.fixed and self.value > T:
            raise ValueError(f"{what}={self.value} keys is larger than the sequence length {T}: give at most {T}, "
                             "or a fraction of T such as 0.125")

    def __str__(self) -> str:
        inverse = 1 / self.value
        text = (f"{self.value} key{'s' * (self.value != 1)}" if self.fixed else
                f"T/{inverse:.0f}" if abs(inverse - round(inverse)) < 1e-9 else f"{self.value:g}·T")
        return text if self.mass is None else f"{self.mass:.0%} of the predicted attention, at most {text}"
