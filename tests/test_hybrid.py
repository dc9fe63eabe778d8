"""Selectors, approximators and the hybrid attention: causality, equivalence with the teacher, bad settings."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig
from src.selectors import SELECTORS, build_selector
from src.sparse import selection_mask

CFG = GPTConfig(vocab_size=19, seq_len=24, n_layer=2, n_head=4, d_model=32)


def teacher() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("top_k", [1, 5, 24])
def test_no_selector_picks_a_future_key(name, top_k):
    torch.manual_seed(1)
    sel_mod = build_selector(name, 3, CFG.d_model, CFG.head_dim, CFG.seq_len, hidden=16, d_index=8, block_size=4,
                             sinks=2)
    for p in sel_mod.parameters():  # random, large weights: any bias towards late keys would show
        torch.nn.init.normal_(p, std=3.0)
    B, T = 2, 24
    x, q, k = torch.randn(B, T, CFG.d_model), torch.randn(B, 3, T, 8) * 5, torch.randn(B, 3, T, 8) * 5
    if sel_mod.picks_blocks:  # block selectors: tests/selectors/test_block.py
        return
    sel = sel_mod.select(x, q, k, top_k)
    pos = torch.arange(T)[:, None]
    width = -(-top_k // 4) * 4 if sel_mod.whole_blocks else top_k  # whole blocks of 4 keys: the budget rounded up
    assert sel.idx.shape == (B, 3, T, width)
    assert torch.all(sel.idx[sel.valid] <= pos.expand(T, width)[None, None].expand_as(sel.idx)[sel.valid]), \
        "a selector picked a key after its query"
    t = torch.arange(T)
    # whole blocks: the own block up to the query, then up to n - 1 earlier blocks of 4
    expected = t % 4 + 1 + torch.clamp(t // 4, max=width // 4 - 1) * 4 if sel_mod.whole_blocks else \
        torch.clamp(t + 1, max=width)
    assert torch.equal(sel.valid.sum(-1)[0, 0], expected)
    # valid slots are distinct keys
    mask = selection_mask(sel, T)
    assert torch.equal(mask.sum(-1), sel.valid.sum(-1))


@pytest.mark.parametrize("layers,heads", [([0], [0]), ("all", "all"), ([1], [1, 3])])
def test_full_k_softmax_reproduces_teacher(layers, heads):
    """With K = seq_len and exact softmax over the selection, the hybrid is the teacher (1e-5)."""
    gpt = teacher()
    for name in ("oracle", "indexer", "query_block", "query_block_oracle", "quest", "query_bound", "mlp", "window",
                 "sink_window"):
        for kernel in ("gather", "masked"):
            spec = HybridSpec.from_config(CFG, layers, heads, CFG.seq_len, kernel=kernel)
            parts = SparseParts(spec, CFG, {"name": name}, {"name": "softmax"})
            x = torch.randint(0, 19, (2, 24))
            torch.testing.assert_close(gpt(x, attention=hybrid_attention(gpt, spec, parts)), gpt(x), atol=1e-5,
                                       rtol=1e-5)


def test_full_k_reproduces_a_teacher_with_slow_rope_and_logn():
    """model.rope_base and model.qk_scale=logn reach the sparse heads through the layer's own q, k (attn.qkv): with
    every key kept the hybrid is the teacher, on the per-query kernel too, with several pieces per block."""
    cfg = GPTConfig(vocab_size=19, seq_len=24, n_layer=2, n_head=4, d_model=32, pos="rope", rope_base=5e5,
                    qk_scale="logn")
    torch.manual_seed(0)
    gpt = GPT(cfg).eval()
    with torch.no_grad():
        for block in gpt.blocks:
            block.attn.q_gain.uniform_(0.2, 0.6)
    x = torch.randint(0, 19, (2, 24))
    for kernel in ("gather", "query_tiles"):
        spec = HybridSpec.from_config(cfg, "all", "all", cfg.seq_len, kernel=kernel)
        parts = SparseParts(spec, cfg, {"name": "query_block", "block_size": 4, "pieces": 2}, {"name": "softmax"})
        torch.testing.assert_close(gpt(x, attention=hybrid_attention(gpt, spec, parts)), gpt(x), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("selector,approximator", [("oracle", "softmax"), ("indexer", "mlp"), ("mlp", "mlp"),
                                                   ("indexer", "softmax"), ("window", "softmax"),
                                                   ("sink_window", "softmax"), ("query_block", "softmax"),
                                                   ("query_block", "mlp"), ("query_block_oracle", "softmax"),
                                                   ("quest", "softmax"), ("query_bound", "softmax")])
@pytest.mark.parametrize("mass", [None, 0.5])
def test_hybrid_is_causal_end_to_end(selector, approximator, mass):
    if mass and selector in ("window", "sink_window"):
        return  # they predict no attention: tests/test_baselines.py
    gpt = teacher()
    spec = HybridSpec.from_config(CFG, "all", "all", 4, mass=mass)
    parts = SparseParts(spec, CFG, {"name": selector, "block_size": 5}, {"name": approximator})  # blocks of 5 (the
    attention = hybrid_attention(gpt, spec, parts)  # last one short): query_block keeps whole blocks of them
    x = torch.randint(0, 19, (2, 24))
    for t in (0, 3, 12):
        y = x.clone()
        y[:, t + 1 :] = (y[:, t + 1 :] + 1) % 19
        torch.testing.assert_close(gpt(x, attention=attention)[:, : t + 1], gpt(y, attention=attention)[:, : t + 1])


@pytest.mark.parametrize("selector", ["block", "query_block"])
def test_whole_blocks_past_the_end_feed_the_mlp_approximator(selector):
    """A budget of whole blocks may pass T when the last block is short (T=24, blocks of 10: 3 blocks, 30 slots):
    the approximator is built as wide as the selection, its slots past T invalid."""
    gpt = teacher()
    spec = HybridSpec.from_config(CFG, "all", "all", budget=1.0)
    parts = SparseParts(spec, CFG, {"name": selector, "block_size": 10}, {"name": "mlp"})
    assert parts.approximators["0"].w1.size(1) == 30 * CFG.head_dim
    assert gpt(torch.randint(0, 19, (2, 24)), attention=hybrid_attention(gpt, spec, parts)).shape == (2, 24, 19)


def test_sparse_heads_differ_dense_heads_exact():
    gpt = teacher()
    spec = HybridSpec.from_config(CFG, [0], [1], 2)
    parts = SparseParts(spec, CFG, {"name": "oracle"}, {"name": "softmax"})
    attn = hybrid_attention(gpt, spec, parts)[0]
    x = torch.randn(1, 24, CFG.d_model)
    q, k, v = gpt.blocks[0].attn.qkv(x)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    captured = {}
    attn.attn.merge_heads = lambda y: captured.setdefault("y", y)  # look at the per-head outputs
    attn(x)
    y = captured["y"]
    torch.testing.assert_close(y[:, [0, 2, 3]], ref[:, [0, 2, 3]])
    assert not torch.allclose(y[:, 1], ref[:, 1])


@pytest.mark.parametrize(
    "layers,heads,top_k,extra,msg",
    [
        ([0], [0], 0, {}, "positive"),
        ([0], [0], -3, {}, "positive"),
        ([0], [0], 25, {}, "larger than the sequence length"),
        ([2], [0], 4, {}, "hybrid.layers"),
        ([0], [4], 4, {}, "hybrid.heads"),
        ([], [0], 4, {}, "hybrid.layers"),
        ([0], [0], 4, {"budget": 0}, "hybrid.budget=0 must be a positive number of keys per query"),
        ([0], [0], 4, {"budget": -0.5}, "hybrid.budget=-0.5 must be a positive number"),
        ([0], [0], 4, {"budget": 25}, "hybrid.budget=25 keys is larger than the sequence length 24"),
        ([0], [0], 4, {"budget": 2.5}, "a fraction of the sequence length must be in (0, 1]"),
        ([0], [0], 4, {"kernel": "fast"}, "hybrid.kernel='fast' is unknown"),
        # 1 key and 1.0 (the whole context) differ by a decimal point: the whole number is refused, both named
        ([0], [0], 4, {"budget": 1}, "hybrid.budget=1 is one key per query (whole numbers count keys, decimals are "
                                     "fractions of T): for the whole context write hybrid.budget=1.0"),
    ],
)
def test_bad_spec(layers, heads, top_k, extra, msg):
    with pytest.raises(ValueError, match=re.escape(msg)) as e:
        HybridSpec.from_config(CFG, layers, heads, top_k, **extra)
    assert "\n" not in str(e.value)


def test_budget_overrides_top_k():
    spec = HybridSpec.from_config(CFG, "all", "all", 4, budget=0.5)
    assert spec.budget.keys(CFG.seq_len) == 12
    assert HybridSpec.from_config(CFG, "all", "all", 4).budget.keys(CFG.seq_len) == 4
    parts = SparseParts(HybridSpec.from_config(CFG, [0], [0], 4, budget=0.5), CFG, {"name": "indexer"},
                        {"name": "mlp"})
    assert parts.approximators["0"].w1.shape[1] == 12 * CFG.head_dim  # the MLP reads K = budget keys


@pytest.mark.parametrize("selector,approximator,kernel,msg", [
    ("indexer", "softmax", "flex", "selector=indexer picks single keys"),
    ("block", "mlp", "tiles", "approximator=mlp is another function"),
])
def test_kernel_the_parts_cannot_use(selector, approximator, kernel, msg):
    spec = HybridSpec.from_config(CFG, [0], [0], 4, kernel=kernel)
    with pytest.raises(ValueError, match=msg):
        SparseParts(spec, CFG, {"name": selector, "block_size": 8}, {"name": approximator})


@pytest.mark.parametrize("selector,recent,budget,msg", [
    # blocks of 8 at T=24: 3 blocks; a budget of 16 keys is 2 blocks, the own one and one more
    ("block", 2, 16, "selector.recent=2 keeps 2 earlier blocks beside the own one, but the budget (16 keys) keeps 2 "
                     "blocks of 8 keys in all at T=24: give selector.recent=1 or less, or a larger hybrid.budget"),
    ("block", 3, 1.0, "selector.recent=3 keeps 3 earlier blocks beside the own one, but the budget (T/1) keeps 3 "
                      "blocks of 8 keys in all at T=24: give selector.recent=2 or less"),
    ("window", 1, 8, "selector.recent=1 keeps a block selector's previous blocks, but selector=window does not "
                     "choose that way: unset it (selector.recent=0), or use selector=block"),
    ("block_window", 1, 8, "selector=block_window does not choose that way"),
])
def test_recent_blocks_that_cannot_be_kept_are_refused(selector, recent, budget, msg):
    spec = HybridSpec.from_config(CFG, budget=budget)
    with pytest.raises(ValueError, match=re.escape(msg)):
        SparseParts(spec, CFG, {"name": selector, "block_size": 8, "recent": recent}, {"name": "softmax"})
    if selector == "block":  # within the budget: kept
        SparseParts(spec, CFG, {"name": selector, "block_size": 8, "recent": recent - 1}, {"name": "softmax"})


def test_a_hybrid_that_keeps_every_key_says_so(caplog):
    """Blocks as long as the context (or a budget covering it) make the hybrid the teacher: said on the console."""
    with caplog.at_level(logging.WARNING, logger="src.hybrid"):
        SparseParts(HybridSpec.from_config(CFG, budget=8), CFG, {"name": "block", "block_size": 32},
                    {"name": "softmax"})
    assert ("every key is kept (selector.block_size=32 is not below T=24, so one block is the whole context; give a "
            "smaller one, e.g. selector.block_size=3)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.hybrid"):
        SparseParts(HybridSpec.from_config(CFG, budget=8), CFG, {"name": "block", "block_size": 8},
                    {"name": "softmax"})
        SparseParts(HybridSpec.from_config(CFG, budget=1.0), CFG, {"name": "indexer"}, {"name": "softmax"})
    assert caplog.text.count("every key is kept") == 1 and "the budget T/1 covers T=24" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# natively sparse models (model.sparse): build_gpt

NATIVE = dict(vocab_size=19, seq_len=48, n_layer=2, n_head=2, d_model=16, pos="rope", sparse_budget=16,
              sparse_block=8)


def native(gate: str = "moba", seed: int = 0, **kw) -> GPT:
    from src.hybrid import build_gpt

    torch.manual_seed(seed)
    model = build_gpt(GPTConfig(**{**NATIVE, "sparse": gate, **kw})).eval()
    for p in model.parameters():  # large weights: a gate that read a later key would show
        torch.nn.init.normal_(p, std=0.5)
    return model


@pytest.mark.parametrize("gate", ["moba", "query_moba"])
def test_a_native_model_has_the_dense_model_s_weights_and_drops_keys(gate):
    """Its checkpoint is a dense model's (the gate has no weights); with the same weights its output differs from the
    dense model's where the budget drops keys, and equals it where every key is kept."""
    sparse, dense = native(gate), GPT(GPTConfig(**NATIVE)).eval()
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    dense.load_state_dict(sparse.state_dict())
    x = torch.randint(0, 19, (2, 48))
    with torch.no_grad():
        assert not torch.allclose(sparse(x), dense(x), atol=1e-3)
        torch.testing.assert_close(sparse(x)[:, :16], dense(x)[:, :16], atol=1e-5, rtol=1e-5)  # 2 blocks: all kept
        everything = native(gate, sparse_budget=1.0)
        dense.load_state_dict(everything.state_dict())
        torch.testing.assert_close(everything(x), dense(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate,layers", [("moba", "all"), ("query_moba", [1])])
def test_a_native_model_is_causal_and_trains(gate, layers):
    model = native(gate, sparse_layers=layers)
    assert [b.attn.sparse is not None for b in model.blocks] == [layers == "all", True]
    x = torch.randint(0, 19, (1, 48))
    y = x.clone()
    y[0, 30:] = (y[0, 30:] + 1) % 19
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :30], model(y)[:, :30], atol=1e-5, rtol=1e-5)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:])
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("gate", ["moba", "query_moba"])
@pytest.mark.parametrize("prompt", [1, 13])
def test_a_native_model_decodes_as_it_runs(gate, prompt):
    from src.model import KVCache

    model = native(gate)
    x = torch.randint(0, 19, (2, 48))
    cache = KVCache(model.cfg, 2)
    with torch.no_grad():
        steps = [model(x[:, :prompt], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(prompt, 48)]
        torch.testing.assert_close(torch.cat(steps, 1), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw,msg", [
    (dict(sparse="nsa"), "model.sparse='nsa' is unknown"),
    (dict(sparse="moba", sparse_layers=[2]), "model.sparse_layers=[2] must be 'all' or a list"),
    (dict(sparse="moba", sparse_block=0), "model.sparse_block=0 must be a positive"),
])
def test_bad_native_settings(kw, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        GPTConfig(**{**NATIVE, **kw})


def test_bad_native_budget_and_a_model_built_without_its_gate():
    from src.hybrid import build_gpt

    with pytest.raises(ValueError, match="model.sparse_budget=1 is one key per query"):
        build_gpt(GPTConfig(**{**NATIVE, "sparse": "moba", "sparse_budget": 1}))
    with pytest.raises(ValueError, match="model.sparse_budget=100 keys is larger than the sequence length 48"):
        build_gpt(GPTConfig(**{**NATIVE, "sparse": "moba", "sparse_budget": 100}))
    with pytest.raises(ValueError, match="build the model with src.hybrid.build_gpt"):
        GPT(GPTConfig(**{**NATIVE, "sparse": "moba"}))(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="the teacher is natively sparse"):
        HybridSpec.from_config(GPTConfig(**{**NATIVE, "sparse": "moba"}))


def test_mixed_heads_under_bf16_autocast():
    """Under bf16 autocast (device.precision=auto on a CPU that multiplies bf16) SDPA returns bf16 for the dense
    heads of float32 q, k, v (a Hugging Face layer's, src/hf/attention.py): one output of both."""
    from src.hybrid import mixed_heads

    spec = HybridSpec.from_config(CFG, [0], [1, 2], 8)
    parts = SparseParts(spec, CFG, {"name": "window"}, {"name": "softmax"})
    q, k, v = (torch.randn(1, CFG.n_head, 24, CFG.head_dim) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixed_heads(torch.randn(1, 24, CFG.d_model), q, k, v, [1, 2], [0, 3], parts.attention(0))
    assert y.shape == q.shape and torch.isfinite(y).all()
