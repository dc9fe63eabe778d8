"""SparseAttention (src/sparse/attention.py): every kernel gives the same output for the same choice, all of them SDPA's
with every block kept; auto's choice; a kernel that cannot serve the parts; the phases of a forward."""

from __future__ import annotations

import pytest
import torch

from src.approximators import build_approximator
from src.bench.timing import Phases
from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig
from src.selectors import build_selector
from src.sparse import (
    Budget,
    SparseAttention,
    flex_block_attention,
    kernel_problem,
    n_blocks,
    sdpa_attention,
    tiled_block_attention,
)
from src.sparse.gather import gather_attention
from tests.helpers import (
    HS,
    D,
    H,
    T,
    block_attention,
    exact_on_choice,
    make,
    qkv,
    random_choice,
)


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


@pytest.mark.slow  # compiles the flex kernel
@pytest.mark.parametrize("T,bs", [(64, 16), (50, 16)])
def test_every_block_kept_is_sdpa(T, bs):
    _, q, k, v = qkv(1, T)
    choice = random_choice(1, T, bs, n_blocks(T, bs))
    with torch.no_grad():
        for y in (flex_block_attention(q, k, v, choice), tiled_block_attention(q, k, v, choice)):
            torch.testing.assert_close(y, sdpa_attention(q, k, v), atol=1e-5, rtol=1e-5)


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


@pytest.mark.slow  # compiles the flex kernel
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
    ("fast", "block", "softmax", "hybrid.kernel='fast' is unknown: use one of auto, gather, flex, tiles, query_flex, "
                                 "query_tiles, masked"),
    ("masked", "indexer", "mlp", "hybrid.kernel=masked computes exact softmax attention, but approximator=mlp"),
])
def test_kernel_that_cannot_serve(kernel, selector, approximator, msg):
    sel = build_selector(selector, H, D, HS, 64, hidden=8, d_index=4, block_size=16)
    app = build_approximator(approximator, H, HS, 16, hidden=8)
    problem = kernel_problem(kernel, sel, app, selector, approximator)
    assert msg in problem and "\n" not in problem
    with pytest.raises(ValueError):
        SparseAttention(sel, app, Budget(16), kernel)


CFG = GPTConfig(vocab_size=19, seq_len=32, n_layer=2, n_head=2, d_model=16)


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
