"""The equal-budget baselines (window, sink_window, their block versions, the block oracle), the dynamic budget
(hybrid.mass), the masked kernel and the distance bias: each picks exactly what it claims, causally."""

from __future__ import annotations

import math

import pytest
import torch

from src.approximators import build_approximator
from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig
from src.selectors import build_selector
from src.selectors.distance import distance_bucket
from src.sparse import Budget, SparseAttention, causal_block_topk, causal_topk, selection_mask
from src.sparse.selection import within_mass

CFG = GPTConfig(vocab_size=19, seq_len=32, n_layer=2, n_head=2, d_model=16)
H, T = 2, 32


def make(name: str, block_size: int = 4, sinks: int = 2):
    return build_selector(name, H, 16, 8, T, hidden=8, d_index=4, block_size=block_size, sinks=sinks)


def chosen_keys(sel, b=0, h=0) -> list[set[int]]:
    """The valid keys of each query, as sets."""
    return [set(sel.idx[b, h, i][sel.valid[b, h, i]].tolist()) for i in range(sel.idx.size(2))]


def chosen_blocks(choice, b=0, h=0) -> list[set[int]]:
    return [set(choice.idx[b, h, r][choice.valid[b, h, r]].tolist()) for r in range(choice.idx.size(2))]


@pytest.mark.parametrize("K", [1, 3, 8, 32])
def test_window_keeps_the_most_recent_keys(K):
    x = torch.randn(2, T, 16)
    sel = make("window").select(x, None, None, K)
    assert chosen_keys(sel) == [set(range(max(0, i - K + 1), i + 1)) for i in range(T)]


@pytest.mark.parametrize("K,sinks", [(1, 2), (3, 2), (6, 2), (6, 0), (8, 4)])
def test_sink_window_keeps_the_first_keys_and_the_most_recent(K, sinks):
    sel = make("sink_window", sinks=sinks).select(torch.randn(1, T, 16), None, None, K)
    for i, keys in enumerate(chosen_keys(sel)):
        first = set(range(min(sinks, K, i + 1)))
        recent = set(range(max(0, i + 1 - (K - len(first))), i + 1)) if K > len(first) else set()
        want = first | recent
        while len(want) < min(K, i + 1):  # the window reaches into the sinks: more recent keys fill in
            want.add(max(set(range(i + 1)) - want))
        assert keys == want, i


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_block_window_keeps_the_own_and_the_previous_blocks(n):
    choice = make("block_window").choose(torch.randn(1, T, 16), None, None, n)
    assert chosen_blocks(choice) == [set(range(max(0, r - n + 1), r + 1)) for r in range(8)]
    assert torch.all(choice.idx[..., 0] == torch.arange(8)), "the own block comes first"


def test_block_sink_window_keeps_the_sink_blocks():
    choice = make("block_sink_window", block_size=4, sinks=6).choose(torch.randn(1, T, 16), None, None, 3)
    # sinks 0..5 lie in blocks 0 and 1: those, then the own block (always) -- nothing left for the window
    assert chosen_blocks(choice) == [{0}, {0, 1}, {0, 1, 2}] + [{0, 1, r} for r in range(3, 8)]
    choice = make("block_sink_window", block_size=4, sinks=1).choose(torch.randn(1, T, 16), None, None, 3)
    assert chosen_blocks(choice)[6] == {0, 5, 6}


@pytest.mark.parametrize("name", ["window", "sink_window", "block_window", "block_sink_window"])
@pytest.mark.parametrize("kernel", ["auto", "gather"])
def test_baselines_are_causal_through_the_model(name, kernel):
    torch.manual_seed(0)
    gpt = GPT(CFG).eval()
    spec = HybridSpec.from_config(CFG, "all", "all", 8, budget=8, kernel=kernel)
    attention = hybrid_attention(gpt, spec, SparseParts(spec, CFG, {"name": name, "block_size": 4, "sinks": 2},
                                                       {"name": "softmax"}))
    x = torch.randint(0, 19, (2, T))
    with torch.no_grad():
        ref = gpt(x, attention=attention)
        assert not torch.allclose(ref, gpt(x), atol=1e-4), "a budget of 8 of 32 keys changes the logits"
        for t in (0, 5, 17):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + 3) % 19
            torch.testing.assert_close(gpt(y, attention=attention)[:, :t + 1], ref[:, :t + 1])


def test_block_oracle_picks_the_top_blocks_of_a_hand_built_map():
    """Keys of block c point in direction c; the queries of block r point (strongly) at one chosen earlier block."""
    bs, nb, hs = 4, 6, 8
    k = torch.zeros(1, 1, nb * bs, hs)
    for c in range(nb):
        k[..., c * bs:(c + 1) * bs, c] = 1.0
    target = {2: 0, 3: 1, 4: 1, 5: 3}  # query block -> the earlier block its queries attend to
    q = torch.zeros(1, 1, nb * bs, hs)
    for r, c in target.items():
        q[..., r * bs:(r + 1) * bs, c] = 20.0
    oracle = build_selector("block_oracle", 1, 16, hs, nb * bs, hidden=8, d_index=4, block_size=bs, sinks=0)
    choice = oracle.choose(torch.zeros(1, nb * bs, 16), q, k, 2)
    for r, c in target.items():
        assert chosen_blocks(choice)[r] == {r, c}


def test_block_oracle_matches_the_pooled_attention():
    torch.manual_seed(3)
    q, k = torch.randn(1, 2, 24, 8) * 3, torch.randn(1, 2, 24, 8) * 3
    probs = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(torch.ones(24, 24, dtype=torch.bool).triu(1),
                                                                 float("-inf")).softmax(-1)
    pooled = probs.view(1, 2, 6, 4, 6, 4).sum((3, 5))  # (B, h, query block, key block)
    oracle = build_selector("block_oracle", 2, 16, 8, 24, hidden=8, d_index=4, block_size=4, sinks=0)
    choice = oracle.choose(torch.zeros(1, 24, 16), q, k, 3)
    for h in range(2):
        for r in range(2, 6):
            earlier = pooled[0, h, r, :r]
            assert chosen_blocks(choice, h=h)[r] == {r, *earlier.topk(2).indices.tolist()}


# ---------------------------------------------------------------------------------------------- dynamic budget


def test_within_mass_keeps_the_fewest_slots_reaching_the_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    valid = torch.ones(4, dtype=torch.bool)
    kept = {m: within_mass(probs, valid, m).sum().item() for m in (0.4, 0.5, 0.75, 0.8, 0.81, 0.96, 1.0)}
    assert kept == {0.4: 1, 0.5: 1, 0.75: 2, 0.8: 2, 0.81: 3, 0.96: 4, 1.0: 4}
    assert torch.equal(within_mass(probs, valid, None), valid)


def test_dynamic_token_budget_never_exceeds_the_cap():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 16, 16) * 3
    for mass in (0.3, 0.9, 0.999, 1.0):
        for K in (2, 5, 16):
            sel = causal_topk(scores, K, mass=mass)
            fixed = causal_topk(scores, K)
            n = sel.valid.sum(-1)
            assert torch.all(n >= 1) and torch.all(n <= fixed.valid.sum(-1))
            # the kept keys are the best ones of the fixed budget, and they reach the mass unless the cap stops them
            assert torch.all(selection_mask(sel, 16) <= selection_mask(fixed, 16))
            p = scores.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            held = (p * selection_mask(sel, 16)).sum(-1)
            short = (held < mass - 1e-6) & (n < fixed.valid.sum(-1))
            assert not short.any(), "stopped below the mass while the cap allowed more"
            # fewest: without its last kept key, a query holds less than the mass
            last = torch.where(sel.valid, torch.arange(K), -1).max(-1).values
            p_last = p.gather(-1, sel.idx.gather(-1, last[..., None].clamp_min(0)))[..., 0]
            assert torch.all(held - p_last < mass + 1e-6)


def test_dynamic_block_budget_counts_the_own_block_first():
    # one query block (row 2) over 3 blocks: predicted shares own 0.6, block 0 0.1, block 1 0.3
    scores = torch.tensor([0.1, 0.3, 0.6]).log().view(1, 1, 1, 3)
    rows = torch.tensor([2])
    kept = {m: chosen_blocks(causal_block_topk(scores, 3, rows, 4, 12, mass=m))[0] for m in (0.5, 0.85, 0.95)}
    assert kept == {0.5: {2}, 0.85: {2, 1}, 0.95: {2, 1, 0}}
    capped = causal_block_topk(scores, 2, rows, 4, 12, mass=0.99)
    assert chosen_blocks(capped)[0] == {2, 1}


@pytest.mark.parametrize("kernel", ["tiles", "flex", "gather"])
def test_dynamic_block_budget_through_the_kernels(kernel):
    """The same narrowed choice on every kernel; causal through the model."""
    torch.manual_seed(0)
    gpt = GPT(CFG).eval()
    spec = HybridSpec.from_config(CFG, "all", "all", 8, budget=16, kernel=kernel, mass=0.6)
    parts = SparseParts(spec, CFG, {"name": "block", "block_size": 4, "d_index": 4}, {"name": "softmax"})
    for p in parts.parameters():
        torch.nn.init.normal_(p, std=2.0)
    x = torch.randint(0, 19, (2, T))
    with torch.no_grad():
        ref = gpt(x, attention=hybrid_attention(gpt, spec, parts))
        gather_spec = HybridSpec.from_config(CFG, "all", "all", 8, budget=16, kernel="gather", mass=0.6)
        torch.testing.assert_close(ref, gpt(x, attention=hybrid_attention(gpt, gather_spec, parts)), atol=1e-5,
                                   rtol=1e-5)
        y = x.clone()
        y[:, 10:] = (y[:, 10:] + 1) % 19
        torch.testing.assert_close(gpt(y, attention=hybrid_attention(gpt, spec, parts))[:, :10], ref[:, :10])
        narrowed = hybrid_attention(gpt, spec, parts)[0].sparse.choose(torch.randn(2, T, 16), None, None)
        assert (~narrowed.valid).any(), "a mass of 0.6 kept every block: nothing was tested"


@pytest.mark.parametrize("name", ["window", "sink_window", "block_window", "block_sink_window"])
def test_dynamic_budget_needs_a_selector_that_predicts_attention(name):
    spec = HybridSpec.from_config(CFG, "all", "all", 8, mass=0.9)
    with pytest.raises(ValueError, match=f"hybrid.mass=0.9 keeps keys by the attention a selector predicts, but "
                                         f"selector={name} ranks keys by position only"):
        SparseParts(spec, CFG, {"name": name, "block_size": 4}, {"name": "softmax"})


@pytest.mark.parametrize("mass", [0, 1.5, -0.1, "a", True])
def test_bad_mass(mass):
    with pytest.raises(ValueError, match=r"hybrid.mass=.* must be a share of the predicted attention in \(0, 1\]"):
        Budget.parse(8, mass=mass)


# ---------------------------------------------------------------------------------------------- masked kernel


@pytest.mark.parametrize("mass", [None, 0.7])
def test_masked_kernel_equals_gather(mass):
    torch.manual_seed(1)
    sel = make("indexer")
    for p in sel.parameters():
        torch.nn.init.normal_(p, std=2.0)
    x, q, k, v = torch.randn(2, T, 16), torch.randn(2, H, T, 8), torch.randn(2, H, T, 8), torch.randn(2, H, T, 8)
    out = {kernel: SparseAttention(sel, build_approximator("softmax", H, 8, 6), Budget(6, mass), kernel,
                                   chunk=7)(x, q, k, v) for kernel in ("gather", "masked")}
    torch.testing.assert_close(out["masked"], out["gather"], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- distance bias


def test_distance_buckets():
    d = torch.tensor([0, 1, 2, 3, 4, 7, 8, 100, 10**6])
    assert distance_bucket(d).tolist() == [0, 1, 2, 2, 3, 3, 4, 7, 15]


def test_distance_bias_lets_a_selector_prefer_recent_keys():
    sel = make("indexer")
    for p in sel.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        sel.distance.bias.copy_(-torch.arange(16.0))  # the farther, the lower
    chosen = sel.select(torch.randn(1, T, 16), None, None, 4)
    assert chosen_keys(chosen) == chosen_keys(make("window").select(torch.randn(1, T, 16), None, None, 4))


@pytest.mark.parametrize("recent", [1, 2])
@pytest.mark.parametrize("mass", [None, 0.01])
def test_recent_blocks_are_always_kept(recent, mass):
    """selector.recent: the blocks just before the own one come next to it, whatever the scores (even against a
    selector that ranks them last), and the dynamic budget never drops them."""
    sel = build_selector("block", H, 16, 8, T, hidden=8, d_index=4, block_size=4, sinks=0, recent=recent)
    for p in sel.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        sel.distance.bias.copy_(torch.arange(16.0))  # the farther, the better: the opposite of a window
    choice = sel.choose(torch.randn(1, T, 16), None, None, 4, mass)
    for r, blocks in enumerate(chosen_blocks(choice)):
        assert set(range(max(0, r - recent), r + 1)) <= blocks, r
        assert choice.idx[0, 0, r, 0] == r
    if mass is None:  # the rest by score: the farthest distance bucket (blocks 0-3 of row 7, distance 4-7)
        assert chosen_blocks(choice)[7] - set(range(7 - recent, 8)) <= {0, 1, 2, 3}
    else:  # a tiny mass: nothing beyond the forced blocks
        assert chosen_blocks(choice)[7] == set(range(7 - recent, 8))
