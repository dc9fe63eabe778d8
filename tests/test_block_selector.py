"""The block selector: causal at every T / K / block size, its shapes, the hybrid with it, its distillation stage."""

from __future__ import annotations

import pytest
import torch

import src.runs
from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig
from src.selectors import BlockSelector, build_selector, selection_mask
from src.selectors.block import block_keys, n_blocks
from src.stages.distill_selector import selector_loss
from src.train import train

CFG = GPTConfig(vocab_size=19, seq_len=24, n_layer=2, n_head=4, d_model=32)


def random_selector(h: int, d_model: int, block_size: int, seed: int = 1) -> BlockSelector:
    torch.manual_seed(seed)
    sel = BlockSelector(h, d_model, d_index=8, block_size=block_size)
    for p in sel.parameters():  # random, large weights: any bias towards late keys would show
        torch.nn.init.normal_(p, std=3.0)
    return sel


@pytest.mark.parametrize("T,block_size", [(16, 4), (23, 4), (40, 16), (24, 5), (7, 16), (9, 1)])
@pytest.mark.parametrize("top_k", [1, 5, "T"])
def test_never_selects_a_future_key(T, block_size, top_k):
    top_k = T if top_k == "T" else min(top_k, T)
    sel_mod, B, h = random_selector(3, 32, block_size), 2, 3
    x = torch.randn(B, T, 32) * 5
    pos = torch.arange(T)[:, None]
    sel = sel_mod.select(x, None, None, top_k)
    assert sel.idx.shape == (B, h, T, top_k)
    assert torch.all(sel.idx <= pos), "a key after its query was selected"
    assert torch.equal(sel.valid.sum(-1)[0, 0], torch.clamp(torch.arange(T) + 1, max=top_k))
    assert torch.equal(selection_mask(sel, T).sum(-1), sel.valid.sum(-1))  # valid slots are distinct keys
    # the query's own block comes first: its earlier keys are all kept when there is room for them
    own = torch.arange(T) - torch.arange(T) % block_size  # first key of each query's block
    for t in range(T):
        if t - own[t] + 1 <= top_k:
            chosen = set(sel.idx[0, 0, t][sel.valid[0, 0, t]].tolist())
            assert set(range(own[t], t + 1)) <= chosen
    # the block-level choice: per query and per block of queries
    for n in sorted({1, 2, n_blocks(T, block_size)}):
        for per_block in (False, True):
            choice = sel_mod.select_blocks(x, min(n, n_blocks(T, block_size)), per_block=per_block)
            rows = choice.rows[:, None]
            assert torch.all(choice.idx <= rows // block_size), "a block after the query's own was chosen"
            assert torch.all(choice.idx[..., 0] == choice.rows // block_size), "the own block is not first"
            keys = block_keys(choice, block_size)
            assert torch.all(keys.idx <= rows), "a key after its query was chosen"
            if n == n_blocks(T, block_size):  # all blocks kept: every query reads exactly its t + 1 keys
                assert torch.equal(keys.valid.sum(-1)[0, 0], choice.rows + 1)


def test_shapes():
    sel, B, T, bs = random_selector(3, 32, 5), 2, 23, 5
    x = torch.randn(B, T, 32)
    assert sel.scores(x, None, None).shape == (B, 3, T, T)
    assert sel.select(x, None, None, 6).idx.shape == (B, 3, T, 6)
    nb = n_blocks(T, bs)
    assert nb == 5
    choice = sel.select_blocks(x, 3)
    assert choice.idx.shape == choice.valid.shape == (B, 3, T, 3) and torch.equal(choice.rows, torch.arange(T))
    per_block = sel.select_blocks(x, 3, per_block=True)
    assert per_block.idx.shape == (B, 3, nb, 3) and torch.equal(per_block.rows, torch.arange(0, T, bs))
    assert torch.equal(per_block.idx, choice.idx[:, :, ::bs])  # a block's choice is its first query's
    assert block_keys(choice, bs).idx.shape == (B, 3, T, 3 * bs)
    # query t in block c has c + 1 blocks to choose from
    assert torch.equal(choice.valid[0, 0].sum(-1), torch.clamp(torch.arange(T) // bs + 1, max=3))


def test_chunked_block_choice_is_the_same():
    sel, x = random_selector(2, 32, 4), torch.randn(2, 37, 32)
    for per_block in (False, True):
        whole = sel.select_blocks(x, 4, per_block=per_block)
        for chunk in (1, 3, 16):
            part = sel.select_blocks(x, 4, per_block=per_block, chunk=chunk)
            assert torch.equal(part.idx, whole.idx) and torch.equal(part.valid, whole.valid)


def test_scores_are_causal():
    """A query's scores of keys 0..t do not change when the input after t does (the own block's prefix mean)."""
    sel, T = random_selector(2, 32, 8), 21
    x = torch.randn(1, T, 32)
    for t in (0, 5, 12, 15):
        y = x.clone()
        y[:, t + 1:] = torch.randn_like(y[:, t + 1:])
        before, after = sel.scores(x, None, None), sel.scores(y, None, None)
        torch.testing.assert_close(before[..., t, : t + 1], after[..., t, : t + 1])


def test_block_means():
    sel = BlockSelector(1, 4, d_index=1, block_size=3)
    ki = torch.arange(7, dtype=torch.float).view(1, 1, 7, 1)
    assert sel.block_means(ki).flatten().tolist() == [1.0, 4.0, 6.0]  # the last block holds key 6 only
    assert sel.prefix_means(ki).flatten().tolist() == [0.0, 0.5, 1.0, 3.0, 3.5, 4.0, 6.0]


def test_kl_loss_is_finite_and_trains():
    sel, T = random_selector(2, 32, 4), 12
    x = torch.randn(2, T, 32)
    probs = torch.rand(2, 2, T, T).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), 0)
    probs = probs / probs.sum(-1, keepdim=True)
    loss = selector_loss("kl", sel.scores(x, None, None), probs, 4)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                                        for p in sel.parameters())


def teacher() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


@pytest.mark.parametrize("block_size", [1, 5, 8, 16, 32])
@pytest.mark.parametrize("layers,heads", [([0], [0]), ("all", "all"), ([1], [1, 3])])
def test_full_k_softmax_reproduces_teacher(layers, heads, block_size):
    """With K = seq_len and exact softmax over the selection, the hybrid is the teacher (1e-5)."""
    gpt = teacher()
    spec = HybridSpec.from_config(layers, heads, CFG.seq_len, CFG)
    parts = SparseParts(spec, CFG, {"name": "block", "block_size": block_size}, {"name": "softmax"})
    assert parts.selectors[str(spec.layers[0])].block_size == block_size
    x = torch.randint(0, 19, (2, 24))
    torch.testing.assert_close(gpt(x, attention=hybrid_attention(gpt, spec, parts)), gpt(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("approximator", ["softmax", "mlp"])
def test_hybrid_is_causal_end_to_end(approximator):
    gpt = teacher()
    spec = HybridSpec.from_config("all", "all", 6, CFG)
    parts = SparseParts(spec, CFG, {"name": "block", "block_size": 4}, {"name": approximator})
    attention = hybrid_attention(gpt, spec, parts)
    x = torch.randint(0, 19, (2, 24))
    for t in (0, 3, 12, 17):
        y = x.clone()
        y[:, t + 1:] = (y[:, t + 1:] + 1) % 19
        torch.testing.assert_close(gpt(x, attention=attention)[:, : t + 1], gpt(y, attention=attention)[:, : t + 1])


def test_build_selector_and_bad_block_size():
    sel = build_selector("block", 2, 32, 8, 24, d_index=4, block_size=6)
    assert isinstance(sel, BlockSelector) and sel.block_size == 6 and sel.d_index == 4
    with pytest.raises(ValueError, match="block_size"):
        build_selector("block", 2, 32, 8, 24, block_size=0)


def test_config_group(tiny_cfg):
    cfg = tiny_cfg("+experiment=distill_selector", "selector=block")
    assert cfg.selector.name == "block" and cfg.selector.block_size == 16 and cfg.selector.loss == "kl"


def test_distill_selector_fast_dev_run(tiny_cfg, tmp_path, monkeypatch):
    from tests.conftest import TINY, compose_config

    monkeypatch.setattr(src.runs, "OUTPUT_ROOT", tmp_path / "outputs")
    teacher_ckpt = train(compose_config(TINY), tmp_path / "teacher")["checkpoint"]
    cfg = tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "trainer.fast_dev_run=true",
                   "selector=block", "selector.block_size=8", "hybrid.layers=all", "hybrid.top_k=8")
    result = train(cfg, tmp_path / "run")
    assert result["stage"] == "distill_selector"
