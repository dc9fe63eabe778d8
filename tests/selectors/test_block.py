"""The block selector (src/selectors/block.py): causal choices, chunking, block means, its loss; the hybrid it makes on
every kernel."""

from __future__ import annotations

import pytest
import torch

from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig
from src.selectors import BlockSelector, build_selector
from src.sparse import block_attention_mass, n_blocks
from src.stages.distill_selector import block_selector_loss

CFG = GPTConfig(vocab_size=19, seq_len=24, n_layer=2, n_head=4, d_model=32)


def random_selector(h: int, d_model: int, block_size: int, seed: int = 1) -> BlockSelector:
    torch.manual_seed(seed)
    sel = BlockSelector(h, d_model, d_index=8, block_size=block_size)
    for p in sel.parameters():  # random, large weights: any bias towards late blocks would show
        torch.nn.init.normal_(p, std=3.0)
    return sel


@pytest.mark.parametrize("T,block_size", [(16, 4), (23, 4), (40, 16), (24, 5), (7, 16), (9, 1)])
@pytest.mark.parametrize("n", [1, 2, "all"])
def test_choice_is_causal(T, block_size, n):
    sel_mod, B, h = random_selector(3, 32, block_size), 2, 3
    nb = n_blocks(T, block_size)
    n = nb if n == "all" else min(n, nb)
    x = torch.randn(B, T, 32) * 5
    choice = sel_mod.choose(x, None, None, n)
    rows = torch.arange(nb)[:, None]
    assert choice.idx.shape == (B, h, nb, n) and choice.block_size == block_size and choice.T == T
    assert torch.all(choice.idx <= rows), "a block after the query block was chosen"
    assert torch.all(choice.idx[..., 0] == torch.arange(nb)), "the own block is not first"
    # the choice of query block r reads nothing after its first query r * block_size
    for r in range(nb):
        t = r * block_size
        y = x.clone()
        y[:, t + 1:] = torch.randn_like(y[:, t + 1:]) * 5
        later = sel_mod.choose(y, None, None, n)
        assert torch.equal(later.idx[:, :, r], choice.idx[:, :, r]), f"query block {r} looked ahead"


def test_chunked_choice_is_the_same():
    sel, x = random_selector(2, 32, 4), torch.randn(2, 37, 32)
    whole = sel.choose(x, None, None, 4)
    for chunk in (1, 3, 16):
        part = sel.choose(x, None, None, 4, chunk=chunk)
        assert torch.equal(part.idx, whole.idx) and torch.equal(part.valid, whole.valid)


def test_choice_under_bf16_autocast():
    """device.precision=bf16-mixed (what auto picks on a GPU or an AMX CPU): the projections run in bf16, the scores
    they are written into in fp32."""
    sel, x = random_selector(2, 32, 4), torch.randn(2, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        choice = sel.choose(x, None, None, 2)
    assert choice.idx.shape == (2, 2, 4, 2) and torch.all(choice.idx[..., 0] == torch.arange(4))


def test_block_means():
    sel = BlockSelector(1, 4, d_index=1, block_size=3)
    ki = torch.arange(7, dtype=torch.float).view(1, 1, 7, 1)
    assert sel.block_means(ki).flatten().tolist() == [1.0, 4.0, 6.0]  # the last block holds key 6 only


def test_block_loss_is_zero_at_the_target_and_trains():
    sel, T, bs = random_selector(2, 32, 4), 20, 4
    x, q, k = torch.randn(2, T, 32), torch.randn(2, 2, T, 8), torch.randn(2, 2, T, 8)
    mass = block_attention_mass(q, k, bs)
    rows = torch.arange(n_blocks(T, bs))
    scores = sel.block_scores(x, q, k, rows)
    loss = block_selector_loss(scores, mass)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0.01
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in sel.parameters())
    perfect = mass.clamp_min(1e-12).log()  # scores = log of the target: KL 0 over the earlier blocks
    assert block_selector_loss(perfect, mass) == pytest.approx(0.0, abs=1e-5)
    assert block_selector_loss(scores[..., :1, :1], mass[..., :1, :1]) == 0.0  # one block: nothing to learn


def teacher() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def hybrid(gpt: GPT, layers, heads, budget, block_size: int, kernel: str, approximator: str = "softmax"):
    spec = HybridSpec.from_config(CFG, layers, heads, 4, budget=budget, kernel=kernel)
    parts = SparseParts(spec, CFG, {"name": "block", "block_size": block_size, "d_index": 8},
                        {"name": approximator})
    torch.manual_seed(2)  # the same weights for every kernel
    for p in parts.parameters():
        torch.nn.init.normal_(p, std=2.0)
    return hybrid_attention(gpt, spec, parts)


@pytest.mark.parametrize("kernel", ["gather", "flex", "tiles", "masked"])
@pytest.mark.parametrize("block_size", [5, 8, 16])
@pytest.mark.parametrize("layers,heads", [([0], [0]), ("all", "all"), ([1], [1, 3])])
def test_every_block_kept_reproduces_teacher(layers, heads, block_size, kernel):
    """With the whole context as budget and exact softmax, the hybrid is the teacher (1e-5) on every kernel."""
    gpt = teacher()
    x = torch.randint(0, 19, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(gpt(x, attention=hybrid(gpt, layers, heads, 1.0, block_size, kernel)), gpt(x),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # compiles the flex kernel
def test_kernels_agree_through_the_model():
    """The same block choice through gather, flex and tiles: the same logits (1e-5)."""
    gpt = teacher()
    x = torch.randint(0, 19, (2, 24))
    with torch.no_grad():
        out = {kernel: gpt(x, attention=hybrid(gpt, "all", "all", 8, 4, kernel))
               for kernel in ("gather", "flex", "tiles", "masked")}
    assert not torch.allclose(out["gather"], gpt(x), atol=1e-3)  # something was dropped
    for kernel in ("flex", "tiles", "masked"):
        torch.testing.assert_close(out[kernel], out["gather"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,approximator", [("gather", "softmax"), ("gather", "mlp"), ("flex", "softmax"),
                                                 ("tiles", "softmax")])
def test_hybrid_is_causal_end_to_end(kernel, approximator):
    """No position's logits depend on a later token, whatever block the later tokens would make attractive."""
    gpt = teacher()
    attention = hybrid(gpt, "all", "all", 8, 4, kernel, approximator)
    x = torch.randint(0, 19, (2, 24))
    with torch.no_grad():
        ref = gpt(x, attention=attention)
        for t in (0, 3, 4, 12, 17):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + 1) % 19
            torch.testing.assert_close(gpt(y, attention=attention)[:, : t + 1], ref[:, : t + 1])


def test_build_selector_and_bad_block_size():
    sel = build_selector("block", 2, 32, 8, 24, hidden=8, d_index=4, block_size=6, sinks=4)
    assert isinstance(sel, BlockSelector) and sel.block_size == 6 and sel.d_index == 4 and sel.picks_blocks
    with pytest.raises(ValueError, match="block_size"):
        build_selector("block", 2, 32, 8, 24, hidden=8, d_index=4, block_size=0, sinks=4)


def test_config_group(tiny_cfg):
    cfg = tiny_cfg("+experiment=distill_selector", "selector=block")
    assert cfg.selector.name == "block" and cfg.selector.block_size == 128 and cfg.selector.loss == "kl"
