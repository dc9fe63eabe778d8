"""The softmax approximator (src/approximators/softmax.py): exact softmax attention over the selected keys; the
registry's builder (src/approximators/__init__.py)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from src.approximators import APPROXIMATORS, build_approximator
from src.approximators.softmax import SoftmaxApproximator
from src.costs import formulas
from src.costs.accounting import ComponentSizes
from src.sparse import Selection, causal_topk, gather_rows, selection_mask
from tests.helpers import HS, H, qkv

T, K = 12, 4


def attend(q, k, v, sel: Selection) -> torch.Tensor:
    """The approximator over a selection, as the gather path (src/sparse/gather.py) feeds it."""
    return SoftmaxApproximator()(q, gather_rows(k, sel.idx), gather_rows(v, sel.idx), sel.valid)


def test_shape():
    _, q, k, v = qkv(2, T)
    out = attend(q, k, v, causal_topk(torch.randn(2, H, T, T), K))
    assert out.shape == (2, H, T, HS)  # (B, h, T, hs)


def test_every_earlier_key_selected_is_dense_causal_attention():
    _, q, k, v = qkv(2, T)
    every = causal_topk(torch.zeros(2, H, T, T), T)  # K = T: query i keeps its i + 1 keys
    assert every.valid.sum(-1)[0, 0].tolist() == list(range(1, T + 1))
    torch.testing.assert_close(attend(q, k, v, every), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_a_random_selection_is_softmax_masked_to_the_selected_keys():
    """What ``exact_softmax`` promises the kernels: the masked / tiles / flex kernels may compute it instead."""
    _, q, k, v = qkv(2, T, seed=3)
    sel = causal_topk(torch.randn(2, H, T, T), K)
    keep = selection_mask(sel, T)  # (B, h, T, T)
    dense = (q @ k.transpose(-2, -1) / math.sqrt(HS)).masked_fill(~keep, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(attend(q, k, v, sel), dense)


def test_an_explicit_selection_by_hand():
    # one query of width 2 choosing keys 0 and 2 of three; the last slot is invalid (points at key 1)
    q = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    k_sel = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]).view(1, 1, 1, 3, 2)
    v_sel = torch.tensor([[1.0, 0.0], [0.0, 3.0], [7.0, 7.0]]).view(1, 1, 1, 3, 2)
    valid = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    # scores q·k / sqrt(2): sqrt(2) and 0
    w0 = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1.0)
    out = SoftmaxApproximator()(q, k_sel, v_sel, valid)
    torch.testing.assert_close(out.view(2), torch.tensor([w0, 3.0 * (1.0 - w0)]))


def test_invalid_slots_contribute_nothing():
    _, q, k, v = qkv(1, T, seed=5)
    sel = causal_topk(torch.randn(1, H, T, T), K)  # queries 0..K-2 have invalid slots
    assert (~sel.valid).any()
    k_sel, v_sel = gather_rows(k, sel.idx), gather_rows(v, sel.idx)
    out = SoftmaxApproximator()(q, k_sel, v_sel, sel.valid)
    junk = ~sel.valid[..., None]
    changed = SoftmaxApproximator()(q, torch.where(junk, 100.0, k_sel), torch.where(junk, -50.0, v_sel), sel.valid)
    torch.testing.assert_close(changed, out, rtol=0, atol=0)


def test_flags_the_kernels_rely_on():
    assert APPROXIMATORS["softmax"] is SoftmaxApproximator
    assert SoftmaxApproximator.exact_softmax is True  # the block-sparse kernels may compute it instead
    assert SoftmaxApproximator.trainable is False and list(SoftmaxApproximator().parameters()) == []
    assert SoftmaxApproximator.reads_keys is True  # the gather path must copy the keys for it


def test_cost_is_the_formula():
    sizes = ComponentSizes(softmax_ops=3, approximator_hidden=7)  # not the defaults: the sizes are read
    assert SoftmaxApproximator.cost(64, 16, 8, sizes) == formulas.softmax_approximator(64, 16, 8, 3)
    assert SoftmaxApproximator.cost(64, 16, 8, sizes) == formulas.Cost(macs=2 * 64 * 8 * 16, ops=3 * 64 * 8)


def test_build_ignores_settings_it_does_not_ask_for():
    app = build_approximator("softmax", H, HS, K, hidden=7, lr=1.0)
    assert type(app) is SoftmaxApproximator


def test_unknown_approximator_is_one_line_naming_the_choices():
    with pytest.raises(ValueError) as e:
        build_approximator("nope", H, HS, K)
    choices = ", ".join(APPROXIMATORS)
    assert str(e.value) == f"approximator.name='nope' is unknown: use one of {choices}"
    assert re.search(r"\bmlp\b", choices) and re.search(r"\bsoftmax\b", choices)
