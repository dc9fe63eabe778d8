"""Key budgets (src/sparse/budget.py): fixed or a fraction of T, in whole blocks, and bad values."""

from __future__ import annotations

import pytest

from src.sparse import (
    Budget,
)


def test_budgets():
    assert Budget.parse(512).keys(4096) == 512 and Budget.parse(512).fixed
    assert Budget.parse(0.125).keys(4096) == 512 and Budget.parse(0.125).keys(8) == 1 and not Budget.parse(0.5).fixed
    assert Budget.parse(512.0) == Budget(512) and Budget.parse(1.0).keys(100) == 100
    assert Budget.parse(512).blocks(4096, 64) == 8 and Budget.parse(100).blocks(4096, 64) == 2  # rounded up
    assert Budget.parse(8).blocks(4096, 64) == 1 and Budget.parse(0.9).blocks(128, 64) == 2  # at most all blocks
    assert str(Budget.parse(512)) == "512 keys" and str(Budget.parse(0.125)) == "T/8"
    Budget.parse(64).check(64)


@pytest.mark.parametrize("value,msg", [
    (0, "must be a positive number"), (-3, "must be a positive number"), (0.0, "must be a positive number"),
    ("half", "must be a positive number"), (True, "must be a positive number"), (float("nan"), "positive"),
    (1.5, "a fraction of the sequence length must be in"),
])
def test_bad_budgets(value, msg):
    with pytest.raises(ValueError, match=msg) as e:
        Budget.parse(value)
    assert "\n" not in str(e.value)


def test_budget_larger_than_t():
    with pytest.raises(ValueError, match="hybrid.budget=129 keys is larger than the sequence length 128"):
        Budget.parse(129).check(128)


@pytest.mark.parametrize("mass", [0, 1.5, -0.1, "a", True])
def test_bad_mass(mass):
    with pytest.raises(ValueError, match=r"hybrid.mass=.* must be a share of the predicted attention in \(0, 1\]"):
        Budget.parse(8, mass=mass)
