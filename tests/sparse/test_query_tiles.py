"""The per-query block-sparse kernels (src/sparse/query_tiles.py, block_mask.py, flex.py): the gather path's output
for the same per-query choice, causal, differentiable; the choice's keys; auto's pick and the kernels' refusals."""

from __future__ import annotations

import pytest
import torch

from src.approximators import build_approximator
from src.selectors import build_selector
from src.sparse import (
    Budget,
    QueryBlockChoice,
    SparseAttention,
    block_mask,
    causal_block_topk,
    flex_block_attention,
    kernel_problem,
    n_blocks,
    query_tiled_attention,
    sdpa_attention,
    selection_mask,
)
from src.sparse.gather import gather_attention
from tests.helpers import HS, D, H, qkv


def query_choice(B: int, T: int, bs: int, n: int, seed: int = 0, mass: float | None = None,
                 recent: int = 0) -> QueryBlockChoice:
    """Every query's own block and n - 1 earlier blocks from random scores: neighbouring queries disagree."""
    torch.manual_seed(seed)
    rows = torch.arange(T)
    c = causal_block_topk(torch.randn(B, H, T, n_blocks(T, bs)) * 3, n, rows // bs, bs, T, mass, recent)
    return QueryBlockChoice(c.idx, c.valid, bs, T)


def gathered(q, k, v, choice: QueryBlockChoice) -> torch.Tensor:
    """The gather path with softmax over the choice's keys (what hybrid.kernel=gather runs)."""
    return gather_attention(choice.keys, build_approximator("softmax", H, HS, 0), q, k, v, chunk=7)


def query_attention(kernel: str, T: int = 64, bs: int = 16, budget=32, approximator: str = "softmax", mass=None,
                    recent: int = 0) -> SparseAttention:
    """SparseAttention of a random per-query block selector (large weights: the queries' choices differ)."""
    torch.manual_seed(1)
    selector = build_selector("query_block", H, D, HS, T, d_index=4, block_size=bs, recent=recent)
    for p in selector.parameters():
        torch.nn.init.normal_(p, std=2.0)
    budget = Budget.parse(budget, mass=mass)
    return SparseAttention(selector, build_approximator(approximator, H, HS, budget.keys_read(T, bs), hidden=8),
                           budget, kernel)


@pytest.mark.parametrize("B,T,bs,n,rows", [
    (1, 64, 16, 2, 16), (2, 64, 16, 4, 32),  # whole blocks
    (2, 50, 16, 2, 16), (1, 50, 16, 3, 64),  # a short last block; tiles longer than any block's list of queries
    (2, 10, 16, 1, 16), (1, 10, 16, 2, 8),  # T < block_size: the own block only
    (2, 40, 8, 5, 24), (1, 100, 8, 4, 7),  # tiles of other sizes than the blocks
])
def test_query_tiles_equals_gather(B, T, bs, n, rows):
    """The same per-query choice through query_tiles and the gather path: equal to 1e-5, every pair in one chunk or
    a few queries a chunk (some of them with no earlier block)."""
    _, q, k, v = qkv(B, T)
    choice = query_choice(B, T, bs, n)
    with torch.no_grad():
        ref = gathered(q, k, v, choice)
        for chunk_pairs in (2**20, 5):
            y = query_tiled_attention(q, k, v, choice, rows=rows, chunk_pairs=chunk_pairs)
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mass,recent", [(0.5, 0), (None, 1), (0.7, 1)])
def test_query_tiles_with_narrowed_and_recent_choices(mass, recent):
    """The dynamic budget's invalid slots (pointing at the own block) and the recent blocks change nothing."""
    _, q, k, v = qkv(2, 80)
    choice = query_choice(2, 80, 8, 4, seed=3, mass=mass, recent=recent)
    assert mass is None or (~choice.valid).any()
    with torch.no_grad():
        torch.testing.assert_close(query_tiled_attention(q, k, v, choice, rows=16), gathered(q, k, v, choice),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T,bs", [(64, 16), (50, 16)])
def test_every_block_kept_is_sdpa(T, bs):
    _, q, k, v = qkv(1, T)
    choice = query_choice(1, T, bs, n_blocks(T, bs))
    with torch.no_grad():
        torch.testing.assert_close(query_tiled_attention(q, k, v, choice, rows=16), sdpa_attention(q, k, v),
                                   atol=1e-5, rtol=1e-5)


def test_the_choice_keys_are_the_selectors_selection():
    """QueryBlockChoice.keys is what the gather and masked paths read: the selector's own selection, all rows or
    some."""
    x, q, k, _ = qkv(2, 50)
    sparse = query_attention("auto", T=50, budget=32)
    choice = sparse.choose(x, q, k)
    assert isinstance(choice, QueryBlockChoice) and choice.idx.shape == (2, H, 50, 2)
    sel = sparse.selection(x, q, k)
    keys = choice.keys()
    assert torch.equal(keys.idx, sel.idx) and torch.equal(keys.valid, sel.valid)
    rows = torch.tensor([3, 17, 49])
    part = choice.keys(rows)
    assert torch.equal(part.idx, sel.idx[:, :, rows]) and torch.equal(part.valid, sel.valid[:, :, rows])
    assert torch.equal(choice.keep().sum(-1), choice.valid.sum(-1)), "valid slots are not distinct blocks"
    assert torch.equal(selection_mask(keys, 50).sum(-1), keys.valid.sum(-1))
    assert torch.equal(sparse.selector.choose(x, q, k, 2, chunk=7).idx, choice.idx)  # scored in chunks of queries


@pytest.mark.parametrize("mass,recent", [(None, 0), (0.5, 1)])
def test_the_layer_on_query_tiles_is_the_gather_layer(mass, recent):
    """SparseAttention with the per-query selector: query_tiles, masked and gather give one output (1e-5)."""
    x, q, k, v = qkv(2, 64)
    with torch.no_grad():
        out = {kernel: query_attention(kernel, budget=32, mass=mass, recent=recent)(x, q, k, v)
               for kernel in ("gather", "masked", "query_tiles", "auto")}
    assert not torch.allclose(out["gather"], sdpa_attention(q, k, v), atol=1e-3), "every key kept: nothing tested"
    for kernel in ("masked", "query_tiles", "auto"):
        torch.testing.assert_close(out[kernel], out["gather"], atol=1e-5, rtol=1e-5)


def test_query_tiles_is_causal():
    """Changing every input after position t (the layer input the selector reads, and q, k, v) leaves the outputs
    up to t as they were."""
    T = 64
    sparse = query_attention("query_tiles", T=T, budget=32)
    x, q, k, v = qkv(1, T)
    with torch.no_grad():
        y = sparse(x, q, k, v)
        for t in (0, 15, 16, 40, 62):
            x2, q2, k2, v2 = (a.clone() for a in (x, q, k, v))
            x2[:, t + 1:] += 3 * torch.randn_like(x2[:, t + 1:])
            for a in (q2, k2, v2):
                a[:, :, t + 1:] += 3 * torch.randn_like(a[:, :, t + 1:])
            torch.testing.assert_close(sparse(x2, q2, k2, v2)[:, :, :t + 1], y[:, :, :t + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B,T,bs,n,rows,mass,recent", [
    (2, 50, 16, 2, 16, None, 0),  # a short last block: padding rows
    (1, 64, 16, 4, 32, None, 0), (2, 40, 8, 5, 7, None, 0),  # tiles of other sizes than the blocks
    (1, 10, 16, 2, 8, None, 0),  # T < block_size: the own block only
    (2, 64, 8, 4, 16, 0.9, 1),  # narrowed choices (invalid slots) and a recent block
])
def test_query_tiles_train_through(B, T, bs, n, rows, mass, recent):
    """The kernel's own backward (flash attention's, from the output and each query's logsumexp): the gather
    path's gradient for q, k and v."""
    _, q, k, v = qkv(B, T)
    choice = query_choice(B, T, bs, n, mass=mass, recent=recent)
    grads = []
    for run in (lambda *t: query_tiled_attention(*t, choice, rows=rows, chunk_pairs=40),
                lambda *t: gathered(*t, choice)):
        inputs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        (run(*inputs) * torch.randn(B, H, T, HS, generator=torch.Generator().manual_seed(0))).sum().backward()
        grads.append([t.grad for t in inputs])
    for mine, ref in zip(*grads):
        torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


def test_auto_picks_the_per_query_kernels():
    _, q, *_ = qkv(1, 64)
    assert query_attention("auto").kernel_for(q) == "query_tiles"  # a CPU
    assert query_attention("auto").kernel_for(q.requires_grad_(True)) == "query_tiles"  # a CPU, training
    assert query_attention("auto", T=256, bs=64, budget=128).kernel_for_device(torch.device("cuda")) == "query_flex"
    assert query_attention("auto", bs=16).kernel_for_device(torch.device("cuda")) == "query_tiles"  # blocks of 16
    assert query_attention("auto", approximator="mlp").kernel_for(q) == "gather"
    assert query_attention("query_tiles", budget=40).keys_read(50) == 48  # whole blocks: 40 keys, 3 blocks of 16


@pytest.mark.parametrize("kernel,selector,approximator,msg", [
    ("tiles", "query_block", "softmax", "hybrid.kernel=tiles runs one choice per block of queries, but "
                                        "selector=query_block chooses per query: use hybrid.kernel=query_tiles"),
    ("query_tiles", "block", "softmax", "selector=block chooses per block of queries: use hybrid.kernel=tiles"),
    ("query_tiles", "indexer", "softmax", "selector=indexer picks single keys: use selector=query_block"),
    ("query_tiles", "query_block", "mlp", "approximator=mlp is another function: use approximator=softmax"),
])
def test_kernels_that_cannot_serve(kernel, selector, approximator, msg):
    sel = build_selector(selector, H, D, HS, 64, hidden=8, d_index=4, block_size=16)
    problem = kernel_problem(kernel, sel, build_approximator(approximator, H, HS, 16, hidden=8), selector,
                             approximator)
    assert msg in problem and "\n" not in problem


def test_query_block_mask_tables():
    """Per query block: the blocks every query chose are full, those some chose (the own one always) partial."""
    T, bs = 40, 8  # 5 blocks, the last one whole
    idx = torch.zeros(1, 1, T, 3, dtype=torch.long)
    pos = torch.arange(T)
    idx[0, 0, :, 0] = pos // bs
    idx[0, 0, :, 1] = 0  # every query of blocks 1.. chooses block 0
    idx[0, 0, :, 2] = torch.where(pos % 2 == 0, 1, 2)  # and half of them block 1, half block 2
    valid = (torch.arange(3) <= (pos // bs)[:, None]) & (idx <= (pos // bs)[:, None])  # causal: block 1 and 2 later
    mask = block_mask(QueryBlockChoice(torch.where(valid, idx, idx[..., :1]), valid, bs, T))
    assert mask.full_kv_num_blocks[0, 0].tolist() == [0, 1, 1, 1, 1]  # block 0, from block 1 on
    assert mask.full_kv_indices[0, 0, 1:, 0].tolist() == [0, 0, 0, 0]
    assert mask.kv_num_blocks[0, 0].tolist() == [1, 1, 2, 3, 3]  # own + the blocks half of the queries chose
    assert mask.kv_indices[0, 0, 3, :3].tolist() == [1, 2, 3]


def test_query_flex_equals_gather():
    """FlexAttention (compiled, CPU forward) on the per-query BlockMask: the gather path's output; a short last block
    and T < block_size included."""
    for T, bs, n in ((64, 16, 2), (50, 16, 3), (10, 16, 2)):
        _, q, k, v = qkv(2, T)
        choice = query_choice(2, T, bs, n)
        with torch.no_grad():
            torch.testing.assert_close(flex_block_attention(q, k, v, choice), gathered(q, k, v, choice), atol=1e-5,
                                       rtol=1e-5)


def test_query_flex_refuses_a_gradient_on_the_cpu():
    _, q, k, v = qkv(1, 32)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward only"):
        flex_block_attention(q, k, v, query_choice(1, 32, 16, 1))
    assert "forward only" in query_attention("query_flex").problem_on(torch.device("cpu"), needs_grad=True)
