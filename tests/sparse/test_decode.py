"""Sparse decoding (src/sparse/decode.py): prefill + one token at a time gives the hybrid's own forward logits."""

from __future__ import annotations

import pytest
import torch

from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig, KVCache

T = 40


# learned positions: with rope, a character repeated at the same distance bucket gives the token selectors exactly
# equal scores in the first layer, computed once by a matrix product over every query (the forward) and once by a
# product over one (generation); the two may differ in the last bit, and a tie at the edge of the budget then breaks
# differently -- both the same scores' top K, but not the same logits. Rope runs in test_decode_with_rope.
CFG = GPTConfig(vocab_size=17, seq_len=T, n_layer=2, n_head=4, d_model=32, pos="learned")


def hybrid(selector: str, approximator: str = "softmax", heads="all", seed: int = 1, recent: int = 0, cfg=CFG,
           **hybrid_kw):
    """A random teacher and random (not trained) sparse parts with weights large enough to make distinct choices."""
    torch.manual_seed(0)
    teacher = GPT(cfg).eval()
    spec = HybridSpec.from_config(cfg, layers="all", heads=heads, **hybrid_kw)
    torch.manual_seed(seed)
    parts = SparseParts(spec, cfg, {"name": selector, "block_size": 8, "recent": recent},
                        {"name": approximator}).eval()
    for p in parts.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return teacher, hybrid_attention(teacher, spec, parts)


@torch.no_grad()
def decode(model: GPT, attention, x: torch.Tensor, prompt: int, cache: KVCache | None = None) -> torch.Tensor:
    """Logits of every position: the first ``prompt`` tokens as one prefill, then one token per call."""
    cache = cache or KVCache(model.cfg, x.size(0))
    steps = [model(x[:, :prompt], attention=attention, cache=cache)]
    steps += [model(x[:, t:t + 1], attention=attention, cache=cache) for t in range(prompt, x.size(1))]
    return torch.cat(steps, 1)


CASES = [  # selector, approximator, heads, hybrid settings: summaries (block, indexer) and re-asked selectors
    ("block", "softmax", [1, 3], {"budget": 16}),
    ("block", "softmax", "all", {"budget": 0.25}),
    ("block", "softmax", "all", {"budget": 24, "recent": 1}),
    ("block", "softmax", "all", {"budget": 16, "mass": 0.9}),
    ("block", "mlp", [0, 2], {"budget": 16}),
    ("block_window", "softmax", [0], {"budget": 16}),
    ("block_sink_window", "softmax", "all", {"budget": 16}),
    ("query_block", "softmax", "all", {"budget": 16}),
    ("query_block", "mlp", [1, 2], {"budget": 16, "recent": 1}),
    ("query_block", "softmax", "all", {"budget": 24, "mass": 0.8}),
    ("query_bound", "softmax", "all", {"budget": 16}),
    ("moba", "softmax", "all", {"budget": 16}),
    ("moba", "softmax", [0, 3], {"budget": 24, "mass": 0.8}),
    ("query_moba", "softmax", "all", {"budget": 16}),
    ("query_moba", "softmax", [2], {"budget": 24, "recent": 1}),
    ("indexer", "softmax", [2], {"budget": 8}),
    ("indexer", "softmax", "all", {"budget": 0.25, "mass": 0.8}),
    ("window", "softmax", "all", {"budget": 8}),
    ("oracle", "softmax", [1], {"budget": 8}),
    ("mlp", "mlp", [0, 1], {"top_k": 8}),
]


@pytest.mark.parametrize("selector,approximator,heads,kw", CASES)
@pytest.mark.parametrize("prompt", [1, 8, 13])
def test_decode_equals_forward(selector, approximator, heads, kw, prompt):
    """Whatever the prompt's length (one token, a whole block, mid-block), cached sparse decoding gives the hybrid's
    logits for the whole sequence -- and the hybrid is not the teacher (the budget drops keys)."""
    teacher, attention = hybrid(selector, approximator, heads, **kw)
    x = torch.randint(0, 17, (2, T))
    with torch.no_grad():
        full = teacher(x, attention=attention)
        assert not torch.allclose(full, teacher(x), atol=1e-3)
    torch.testing.assert_close(decode(teacher, attention, x, prompt), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selector", ["block", "indexer"])
def test_full_budget_decode_is_dense(selector):
    teacher, attention = hybrid(selector, budget=T)
    x = torch.randint(0, 17, (1, T))
    torch.testing.assert_close(decode(teacher, attention, x, 5), teacher(x).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selector", ["block", "query_block", "quest"])
def test_decode_with_rope(selector):
    """The cache holds the keys after rope, the new query is rotated at its own position: generation equals the
    forward on a rope model too (block selectors: a block's score reads its mean or bounds, never an exact tie)."""
    rope = GPTConfig(vocab_size=17, seq_len=T, n_layer=2, n_head=4, d_model=32, pos="rope")
    teacher, attention = hybrid(selector, cfg=rope, budget=16)
    x = torch.randint(0, 17, (2, T))
    with torch.no_grad():
        full = teacher(x, attention=attention)
    for prompt in (1, 13):
        torch.testing.assert_close(decode(teacher, attention, x, prompt), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selector,heads", [("block", "all"), ("block", [1]), ("indexer", [0, 3]), ("window", "all"),
                                            ("query_block", "all"), ("query_bound", "all"), ("moba", "all"),
                                            ("query_moba", "all")])
def test_decode_never_reads_a_future_position(selector, heads):
    """Cache rows after the current token hold huge values: a step that read one would change its output."""
    teacher, attention = hybrid(selector, heads=heads, budget=16)
    x = torch.randint(0, 17, (1, T))
    cache = KVCache(CFG, 1)
    for layer in cache.layers:
        layer.k.fill_(1e4), layer.v.fill_(1e4)
    out = decode(teacher, attention, x, 3, cache)
    torch.testing.assert_close(out, teacher(x, attention=attention).detach(), atol=1e-5, rtol=1e-5)


def test_summaries_follow_the_sliding_context():
    """Generating past T slides the context (restarting from the last T/2 tokens); greedy tokens then equal those
    of a hybrid forward pass over the same context each step, so the block summaries after a slide describe the
    tokens kept, not the ones dropped."""
    teacher, attention = hybrid("block", budget=16)
    idx = torch.randint(0, 17, (1, 6))
    out = teacher.generate(idx, 90, top_k=1, attention=attention)  # slides 4 times
    ref, start = idx, 0
    with torch.no_grad():
        for _ in range(90):
            nxt = teacher(ref[:, start:], attention=attention)[:, -1].argmax(-1, keepdim=True)
            ref = torch.cat([ref, nxt], 1)
            if ref.size(1) - start > T:
                start = ref.size(1) - T // 2
    assert torch.equal(out, ref)


def test_block_oracle_cannot_generate():
    teacher, attention = hybrid("block_oracle", budget=16)
    with pytest.raises(ValueError, match="selector=BlockOracleSelector reads the later queries of its block"):
        teacher.generate(torch.zeros(1, 3, dtype=torch.long), 2, attention=attention)
