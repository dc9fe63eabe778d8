"""The MLP approximator (src/approximators/mlp.py), the prototype's HeadApproximator: an MLP over the concatenated
selected values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.approximators import APPROXIMATORS, build_approximator
from src.approximators.mlp import MLPApproximator
from src.config import ApproximatorConf
from src.costs import formulas
from src.costs.accounting import ComponentSizes
from src.sparse import causal_topk, gather_attention, gather_rows
from tests.helpers import HS, H, qkv

T, K, HIDDEN = 12, 4, 8


def mlp(seed: int = 0) -> MLPApproximator:
    torch.manual_seed(seed)
    return build_approximator("mlp", H, HS, K, hidden=HIDDEN)


def selected(B: int = 2, seed: int = 0):
    """q (B, H, T, HS) and the values of a random causal selection of K keys: v_sel (B, H, T, K, HS), valid."""
    _, q, _, v = qkv(B, T, seed)
    sel = causal_topk(torch.randn(B, H, T, T), K)
    return q, gather_rows(v, sel.idx), sel.valid


def test_shape_and_settings():
    app = mlp()
    q, v_sel, valid = selected()
    assert app(q, None, v_sel, valid).shape == (2, H, T, HS)  # (B, h, T, hs)
    assert app.w1.shape == (H, K * HS, HIDDEN) and app.w2.shape == (H, HIDDEN, HS)  # one MLP per served head
    default = build_approximator("mlp", H, HS, K)  # hidden unset: src/config.py's default
    assert default.w1.shape[-1] == ApproximatorConf.hidden


def test_reads_only_the_selected_values():
    """``reads_keys = False``: the gather path hands it no keys; the query does not matter either."""
    app = mlp()
    q, v_sel, valid = selected()
    out = app(q, None, v_sel, valid)
    torch.testing.assert_close(app(torch.randn_like(q), torch.randn(*v_sel.shape), v_sel, valid), out,
                               rtol=0, atol=0)
    _, q, k, v = qkv(1, T, seed=2)  # through the gather path itself
    y = gather_attention(lambda rows: causal_topk(q[:, :, rows] @ k.transpose(-2, -1), K, rows), app, q, k, v,
                         chunk=5)
    assert y.shape == (1, H, T, HS) and torch.isfinite(y).all()


def test_output_depends_on_the_order_and_content_of_the_selected_values():
    app = mlp()
    q, v_sel, valid = selected()
    out = app(q, None, v_sel, valid)
    last = T - 1  # every slot of the last query is valid
    swapped = v_sel.clone()
    swapped[:, :, last] = v_sel[:, :, last].flip(-2)  # same keys, another order
    assert not torch.allclose(app(q, None, swapped, valid)[:, :, last], out[:, :, last])
    torch.testing.assert_close(app(q, None, swapped, valid)[:, :, :last], out[:, :, :last])  # other queries: same
    changed = v_sel.clone()
    changed[:, :, last, 0] += 1.0  # the best key's value
    assert not torch.allclose(app(q, None, changed, valid)[:, :, last], out[:, :, last])


def test_invalid_slots_contribute_nothing():
    app = mlp()
    q, v_sel, valid = selected()
    assert (~valid).any()  # queries 0..K-2 have fewer than K earlier keys
    junk = torch.where(~valid[..., None], torch.full_like(v_sel, 9.0), v_sel)
    torch.testing.assert_close(app(q, None, junk, valid), app(q, None, v_sel, valid), rtol=0, atol=0)


def test_it_learns():
    app = mlp()
    q, v_sel, valid = selected()
    torch.manual_seed(1)
    target = torch.randn(2, H, T, HS)
    opt = torch.optim.Adam(app.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.mse_loss(app(q, None, v_sel, valid), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_flags_the_kernels_rely_on():
    assert APPROXIMATORS["mlp"] is MLPApproximator
    assert MLPApproximator.trainable is True and sum(p.numel() for p in mlp().parameters()) > 0
    assert MLPApproximator.exact_softmax is False  # no block-sparse kernel may compute it: gather only
    assert MLPApproximator.reads_keys is False


def test_cost_is_the_formula_and_the_layers_it_has():
    sizes = ComponentSizes(approximator_hidden=HIDDEN, softmax_ops=3)
    cost = MLPApproximator.cost(64, HS, K, sizes)
    assert cost == formulas.mlp_approximator(64, HS, K, HIDDEN)
    app = mlp()  # per query and head: one multiply-accumulate per weight of its two layers
    assert cost == formulas.Cost(macs=64 * (app.w1[0].numel() + app.w2[0].numel()))
