"""The sparse-attention library: causal top-K and block top-n, budgets, the gather / flex / tiles kernels (the same
output for the same choice, SDPA when nothing is dropped), the block attention mass, phases, bad settings."""

from __future__ import annotations

import pytest
import torch

from src.approximators import build_approximator
from src.model import causal_attention_probs
from src.selectors import build_selector
from src.sparse import (
    BlockChoice,
    Budget,
    Phases,
    SparseAttention,
    block_attention_mass,
    block_mask,
    causal_block_topk,
    causal_topk,
    flex_block_attention,
    gather_rows,
    kernel_problem,
    n_blocks,
    sdpa_attention,
    selection_mask,
    tiled_block_attention,
)
from src.sparse.gather import gather_attention

H, HS, D = 2, 16, 32  # heads, head size, layer width of the tiny shapes (flex compiles once per shape)


def qkv(B: int, T: int, seed: int = 0):
    torch.manual_seed(seed)
    return torch.randn(B, T, D), *(torch.randn(B, H, T, HS) for _ in range(3))


def random_choice(B: int, T: int, bs: int, n: int, seed: int = 0) -> BlockChoice:
    torch.manual_seed(seed)
    nb = n_blocks(T, bs)
    return causal_block_topk(torch.randn(B, H, nb, nb), n, torch.arange(nb), bs, T)


def exact_on_choice(q, k, v, choice: BlockChoice) -> torch.Tensor:
    """The reference: softmax over the chosen blocks' causal keys, from the materialised probabilities."""
    T = q.size(-2)
    keep = selection_mask(choice.keys(), T)  # (B, h, T, T)
    scores = q @ k.transpose(-2, -1) / HS**0.5
    return scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v


# ---------------------------------------------------------------------------------------------- token selection


def test_causal_topk_ignores_huge_future_scores():
    scores = torch.zeros(1, 1, 6, 6)
    scores[..., 5] = 1e9  # the last key scores highest for everyone
    sel = causal_topk(scores, 2)
    assert torch.all(sel.idx <= torch.arange(6)[:, None])
    assert sel.idx[0, 0, 5, 0] == 5


@pytest.mark.parametrize("fill", [float("-inf"), float("nan"), -3.4e38])
def test_causal_topk_never_picks_a_future_key_on_ties_with_the_mask(fill):
    """Earlier keys scored -inf (or NaN, or the lowest float) still rank above every masked future key."""
    sel = causal_topk(torch.full((1, 1, 6, 6), fill), 3)
    pos = torch.arange(6)[:, None]
    assert torch.all(sel.idx <= pos)
    assert torch.equal(selection_mask(sel, 6).sum(-1)[0, 0], torch.clamp(torch.arange(6) + 1, max=3))


def test_gather_rows():
    t = torch.arange(2 * 1 * 5 * 3, dtype=torch.float).view(2, 1, 5, 3)
    idx = torch.tensor([[[[0, 0], [1, 0], [2, 1], [3, 0], [4, 2]]]]).expand(2, 1, 5, 2)
    g = gather_rows(t, idx)
    assert g.shape == (2, 1, 5, 2, 3)
    assert torch.equal(g[1, 0, 4, 1], t[1, 0, 2]) and torch.equal(g[0, 0, 2, 0], t[0, 0, 2])
    by_gather = torch.gather(t[:, :, None].expand(-1, -1, 5, -1, -1), 3, idx[..., None].expand(-1, -1, -1, -1, 3))
    assert torch.equal(g, by_gather)


# ---------------------------------------------------------------------------------------------- block selection


@pytest.mark.parametrize("fill", [None, float("nan"), float("-inf"), float("inf")])
@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_block_topk_is_causal_and_keeps_the_own_block(fill, n):
    T, bs = 23, 4  # 6 blocks, the last one 3 long
    nb = n_blocks(T, bs)
    scores = torch.randn(2, H, nb, nb) * 5
    scores[..., -1] = 1e9  # the last block scores highest for every query block
    if fill is not None:
        scores[..., ::2] = fill
    choice = causal_block_topk(scores, n, torch.arange(nb), bs, T)
    rows = torch.arange(nb)[:, None]
    assert choice.idx.shape == (2, H, nb, n)
    assert torch.all(choice.idx <= rows), "a block after the query block was chosen"
    assert torch.all(choice.idx[..., 0] == torch.arange(nb)), "the own block is not first"
    assert torch.equal(choice.valid[0, 0].sum(-1), torch.clamp(torch.arange(nb) + 1, max=n))
    assert torch.equal(choice.keep().sum(-1), choice.valid.sum(-1)), "valid slots are not distinct blocks"
    keys = choice.keys()
    assert torch.all(keys.idx <= torch.arange(T)[:, None]), "a key after its query was chosen"
    if n == nb:  # every block kept: every query reads exactly its t + 1 keys
        assert torch.equal(keys.valid.sum(-1)[0, 0], torch.arange(T) + 1)


def test_block_topk_picks_the_best_earlier_blocks():
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0, 9.0]]).expand(5, 5)[None, None]  # row r scores block c
    choice = causal_block_topk(scores, 3, torch.arange(5), 2, 10)
    assert choice.idx[0, 0, 4].tolist() == [4, 0, 2]  # own first, then the two best earlier ones
    assert choice.idx[0, 0, 1].tolist()[:2] == [1, 0] and choice.valid[0, 0, 1].tolist() == [True, True, False]


def test_choice_keys_of_some_rows():
    choice = random_choice(1, 20, 4, 3)
    rows = torch.tensor([0, 5, 13, 19])
    part, whole = choice.keys(rows), choice.keys()
    assert torch.equal(part.idx, whole.idx[:, :, rows]) and torch.equal(part.valid, whole.valid[:, :, rows])


# ---------------------------------------------------------------------------------------------- budgets


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


# ---------------------------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("T,bs,n", [(64, 16, 2), (50, 16, 2), (64, 16, 4), (40, 8, 5), (33, 32, 1)])
def test_flex_tiles_and_gather_give_the_same_output(T, bs, n):
    """The same block choice through the three kernels: equal to 1e-5, and to the materialised reference."""
    _, q, k, v = qkv(2, T)
    choice = random_choice(2, T, bs, n)
    ref = exact_on_choice(q, k, v, choice)
    softmax = build_approximator("softmax", H, HS, 0)
    with torch.no_grad():
        gathered = gather_attention(choice.keys, softmax, q, k, v, chunk=7)
        flex = flex_block_attention(q, k, v, choice)
        tiles = tiled_block_attention(q, k, v, choice)
        tiles_one = tiled_block_attention(q, k, v, choice, chunk=1)
    for name, y in (("gather", gathered), ("flex", flex), ("tiles", tiles), ("tiles, one block a call", tiles_one)):
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("T,bs", [(64, 16), (50, 16)])
def test_every_block_kept_is_sdpa(T, bs):
    _, q, k, v = qkv(1, T)
    choice = random_choice(1, T, bs, n_blocks(T, bs))
    with torch.no_grad():
        for y in (flex_block_attention(q, k, v, choice), tiled_block_attention(q, k, v, choice)):
            torch.testing.assert_close(y, sdpa_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_block_mask_tables():
    choice = random_choice(1, 64, 16, 2, seed=3)
    mask = block_mask(choice)
    assert mask.BLOCK_SIZE == (16, 16) and mask.seq_lengths == (64, 64)
    assert torch.equal(mask.kv_num_blocks[0, 0], torch.ones(4, dtype=torch.int32))  # the own block: partial
    assert torch.equal(mask.kv_indices[0, 0, :, 0], torch.arange(4, dtype=torch.int32))
    assert mask.full_kv_num_blocks[0, 0].tolist() == [0, 1, 1, 1]  # one earlier block each, from block 1 on
    for r in range(1, 4):
        assert mask.full_kv_indices[0, 0, r, 0] == choice.idx[0, 0, r, 1]


def test_tiles_train_through():
    """The tiles kernel has a gradient (a CPU user can fine-tune through the block-sparse path)."""
    _, q, k, v = qkv(1, 48)
    q.requires_grad_(True)
    choice = random_choice(1, 48, 16, 2)
    tiled_block_attention(q, k, v, choice).sum().backward()
    ref_q = q.detach().clone().requires_grad_(True)
    exact_on_choice(ref_q, k, v, choice).sum().backward()
    torch.testing.assert_close(q.grad, ref_q.grad, atol=1e-5, rtol=1e-5)


def test_flex_where_it_cannot_run():
    from src.sparse import flex_unavailable

    assert "forward only" in flex_unavailable(torch.device("cpu"), needs_grad=True)
    assert "not mps: use hybrid.kernel=tiles" in flex_unavailable(torch.device("mps"), needs_grad=False)
    assert "selector.block_size=48: FlexAttention's CUDA kernel needs blocks of a multiple of 64" in (
        flex_unavailable(torch.device("cuda"), needs_grad=False, block_size=48))
    assert flex_unavailable(torch.device("cuda"), needs_grad=True, block_size=128) is None
    assert flex_unavailable(torch.device("cpu"), needs_grad=False, block_size=5) is None  # any block on a CPU
    assert "multiple of 64" in block_attention("flex", bs=16).problem_on(torch.device("cuda"))
    assert block_attention("tiles", bs=16).problem_on(torch.device("cuda")) is None


def test_flex_refuses_a_gradient_on_the_cpu():
    _, q, k, v = qkv(1, 32)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward only"):
        flex_block_attention(q, k, v, random_choice(1, 32, 16, 1))


# ---------------------------------------------------------------------------------------------- SparseAttention


def block_attention(kernel: str, bs: int = 16, budget: float | int = 1.0, approximator: str = "softmax"):
    torch.manual_seed(1)
    selector = build_selector("block", H, D, HS, 64, hidden=8, d_index=4, block_size=bs, sinks=4)
    slots = Budget.parse(budget).blocks(64, bs) * bs
    return SparseAttention(selector, build_approximator(approximator, H, HS, slots, hidden=8), Budget.parse(budget), kernel)


def test_auto_kernel():
    _, q, *_ = qkv(1, 32)
    assert block_attention("auto").kernel_for(q) == "tiles"  # a CPU: the tiles kernel
    assert block_attention("auto", approximator="mlp").kernel_for(q) == "gather"
    indexer = SparseAttention(build_selector("indexer", H, D, HS, 64, hidden=8, d_index=4),
                              build_approximator("softmax", H, HS, 4), Budget(4), "auto")
    assert indexer.kernel_for(q) == "masked"  # a token selector with softmax: the mask over the scores
    mlp = SparseAttention(build_selector("indexer", H, D, HS, 64, hidden=8, d_index=4),
                          build_approximator("mlp", H, HS, 4, hidden=8), Budget(4), "auto")
    assert mlp.kernel_for(q) == "gather"


def test_phases_split_the_time():
    x, q, k, v = qkv(1, 64)
    for kernel, phases_seen in (("flex", {"selection", "mask", "kernel"}), ("tiles", {"selection", "kernel"}),
                                ("gather", {"selection", "kernel"})):
        phases = Phases("cpu")
        with torch.no_grad():
            block_attention(kernel, budget=32)(x, q, k, v, phases)
        assert set(phases.seconds) == phases_seen and all(t > 0 for t in phases.seconds.values())


@pytest.mark.parametrize("kernel,selector,approximator,msg", [
    ("flex", "indexer", "softmax", "hybrid.kernel=flex runs whole blocks of keys, but selector=indexer picks single"),
    ("tiles", "mlp", "softmax", "selector=mlp picks single keys: use selector=block"),
    ("flex", "block", "mlp", "approximator=mlp is another function: use approximator=softmax"),
    ("fast", "block", "softmax", "hybrid.kernel='fast' is unknown: use one of auto, gather, flex, tiles, masked"),
    ("masked", "indexer", "mlp", "hybrid.kernel=masked computes exact softmax attention, but approximator=mlp"),
])
def test_kernel_that_cannot_serve(kernel, selector, approximator, msg):
    sel = build_selector(selector, H, D, HS, 64, hidden=8, d_index=4, block_size=16)
    app = build_approximator(approximator, H, HS, 16, hidden=8)
    problem = kernel_problem(kernel, sel, app, selector, approximator)
    assert msg in problem and "\n" not in problem
    with pytest.raises(ValueError):
        SparseAttention(sel, app, Budget(16), kernel)


# ---------------------------------------------------------------------------------------------- block attention mass


@pytest.mark.parametrize("T,bs,chunk", [(32, 8, 1024), (30, 8, 16), (29, 4, 5)])
def test_block_attention_mass(T, bs, chunk):
    """Equal to the materialised probabilities pooled per (query block, key block), whatever the chunk."""
    _, q, k, _ = qkv(2, T)
    probs = causal_attention_probs(q, k)  # (B, h, T, T)
    nb = n_blocks(T, bs)
    pad = nb * bs - T
    pooled = torch.nn.functional.pad(probs, (0, pad, 0, pad)).view(2, H, nb, bs, nb, bs).sum((3, 5))
    mass = block_attention_mass(q, k, bs, chunk)
    torch.testing.assert_close(mass, pooled)
    rows = torch.clamp(T - torch.arange(nb) * bs, max=bs).float()
    torch.testing.assert_close(mass.sum(-1), rows.expand(2, H, nb))  # each query's probabilities sum to 1
    assert torch.all(mass.triu(1) == 0)  # no mass on later blocks


def test_block_mask_for_backward_has_the_transposed_tables():
    """The tables FlexAttention's backward pass reads (per key block: the query blocks that read it) agree with the
    choice (the CUDA backward itself cannot run on this CPU-only suite)."""
    choice = random_choice(2, 80, 16, 3, seed=4)
    mask = block_mask(choice, for_backward=True)
    readers = choice.keep().sum(-2)  # (B, h, nb): query blocks reading each key block
    assert torch.equal((mask.q_num_blocks + mask.full_q_num_blocks).long(), readers)
    assert torch.equal(mask.q_num_blocks.long(), torch.ones_like(readers))  # the diagonal: each block's own
