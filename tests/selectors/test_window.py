"""The positional baselines (src/selectors/window.py, sink_window.py): window, sink + window, at token and block level;
causal through the model."""

from __future__ import annotations

import pytest
import torch

from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig
from tests.helpers import T, chosen_blocks, chosen_keys, make

CFG = GPTConfig(vocab_size=19, seq_len=32, n_layer=2, n_head=2, d_model=16)


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


@pytest.mark.parametrize("name", ["window", "sink_window", "block_window", "block_sink_window"])
def test_dynamic_budget_needs_a_selector_that_predicts_attention(name):
    spec = HybridSpec.from_config(CFG, "all", "all", 8, mass=0.9)
    with pytest.raises(ValueError, match=f"hybrid.mass=0.9 keeps keys by the attention a selector predicts, but "
                                         f"selector={name} ranks keys by position only"):
        SparseParts(spec, CFG, {"name": name, "block_size": 4}, {"name": "softmax"})
