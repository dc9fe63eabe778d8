"""The per-query block selector (src/selectors/query_block.py): every query its own choice of whole blocks, causal,
the budget in blocks; its distillation loss; the stages end to end."""

from __future__ import annotations

import pytest
import torch

from src.costs import formulas
from src.selectors import build_selector
from src.sparse import n_blocks
from src.sparse.choice import block_keys
from src.stages.distill_selector import block_selector_loss
from src.train import train


def needle_selector(block_size: int = 4):
    """One head over d_model = d_index = 8, index query = index key = 10 x the input, no distance bias: a query's
    best block is the one whose mean input points its way."""
    sel = build_selector("query_block", 1, 8, 8, 32, d_index=8, block_size=block_size)
    with torch.no_grad():
        sel.wq.weight.copy_(torch.eye(8) * 10), sel.wk.weight.copy_(torch.eye(8) * 10)
        sel.own.weight.zero_(), sel.own.bias.fill_(-100.0)
    return sel


def test_each_query_fetches_its_own_needle_block():
    """Blocks 1 and 5 of 8 hold two different needles; in the last block, the query that asks for needle A keeps block
    1 and the next query, asking for B, keeps block 5 -- one choice per block of queries (selector=block) could
    serve only one of them, and a window of 2 blocks neither."""
    x = torch.randn(1, 32, 8) * 0.01
    x[0, 4:8, 0] = 1.0  # needle A fills block 1
    x[0, 20:24, 1] = 1.0  # needle B fills block 5
    x[0, 29, 0], x[0, 30, 1] = 1.0, 1.0  # two queries of block 7 ask for A and B
    sel = needle_selector()
    s = sel.select(x, None, None, 8)  # two blocks: the own one and the best earlier one
    assert s.idx.shape == (1, 1, 32, 8)
    kept = lambda t: sorted({int(i) // 4 for i in s.idx[0, 0, t][s.valid[0, 0, t]]})  # noqa: E731
    assert kept(29) == [1, 7] and kept(30) == [5, 7]
    assert s.valid[0, 0, 29].sum() == 4 + 2  # block 1 whole, block 7 up to the query (28, 29)


@pytest.mark.parametrize("T,bs,top_k,recent,pieces", [(32, 4, 8, 0, 1), (30, 4, 12, 1, 1), (17, 8, 8, 0, 1),
                                                      (9, 16, 5, 0, 1), (30, 4, 12, 0, 2), (17, 8, 8, 1, 4)])
def test_choice_is_causal_and_whole_blocks(T, bs, top_k, recent, pieces):
    """Every query keeps its own block up to itself first, then ``recent`` blocks just before it, then the best
    earlier blocks: never a key after the query, and a query's choice reads nothing after it (with several pieces
    per block too: the last block's pieces past T are empty)."""
    torch.manual_seed(0)
    sel = build_selector("query_block", 2, 8, 8, T, d_index=4, block_size=bs, recent=recent, pieces=pieces)
    for p in sel.parameters():
        torch.nn.init.normal_(p, std=3.0)
    x = torch.randn(2, T, 8)
    s = sel.select(x, None, None, top_k)
    n = -(-top_k // bs)
    t = torch.arange(T)
    assert s.idx.shape == (2, 2, T, n * bs)
    assert torch.all(s.idx <= t[:, None]), "a key after its query"
    assert torch.equal(s.valid.sum(-1)[0, 0], t % bs + 1 + torch.clamp(t // bs, max=n - 1) * bs)
    blocks = s.idx // bs
    assert torch.all(blocks[..., :bs] == (t // bs)[:, None]), "the own block is not first"
    if recent:
        near = (t // bs >= 1)
        assert torch.all(blocks[..., bs:2 * bs][:, :, near] == (t // bs - 1)[near][:, None])
    for q in (0, T // 2, T - 1):
        y = x.clone()
        y[:, q + 1:] = torch.randn_like(y[:, q + 1:]) * 9
        later = sel.select(y, None, None, top_k)
        assert torch.equal(later.idx[:, :, :q + 1], s.idx[:, :, :q + 1])


def test_the_selection_is_block_keys_of_the_block_scores():
    """select_rows is the block choice of ``block_rows`` turned into keys: the same rule as the block selector's."""
    torch.manual_seed(0)
    sel = build_selector("query_block", 2, 8, 8, 24, d_index=4, block_size=4)
    x = torch.randn(1, 24, 8)
    rows = torch.arange(24)
    scores = sel.block_rows(sel.prepare(x, None, None), rows)
    assert scores.shape == (1, 2, 24, n_blocks(24, 4))
    best = scores.masked_fill(torch.arange(6) >= (rows // 4)[:, None], float("-inf")).argmax(-1)  # best earlier block
    s = sel.select(x, None, None, 8)
    expected = block_keys(torch.stack([(rows // 4).expand(1, 2, 24), best], -1), torch.ones(1, 2, 24, 2, dtype=bool)
                          & (rows >= 4)[:, None] | (torch.arange(2) == 0), rows, 4)
    torch.testing.assert_close(s.idx[s.valid], expected.idx[expected.valid])


def test_pieces_score_log_mean_exp_of_their_means():
    """selector.pieces=2: a key block scores log mean exp of its two halves' scores (each half's mean index key
    against the query), not its whole mean's; the same weights run either way."""
    torch.manual_seed(0)
    one, two = (build_selector("query_block", 2, 8, 8, 24, d_index=4, block_size=4, pieces=p) for p in (1, 2))
    two.load_state_dict(one.state_dict())  # the same weights: pieces are not a weight
    x, rows = torch.randn(1, 24, 8), torch.arange(24)
    bias = one.block_rows(one.prepare(torch.zeros(1, 24, 8), None, None), rows)  # distance and own scores only
    whole = one.block_rows(one.prepare(x, None, None), rows)
    ki = one.wk(x.view(1, 12, 2, 8).mean(2)).view(1, 12, 2, 4).transpose(1, 2)  # (1, h, 12 halves, d)
    qi = one.wq(x).view(1, 24, 2, 4).transpose(1, 2)
    content = (qi @ ki.transpose(-2, -1) / 2).unflatten(-1, (6, 2)).logsumexp(-1) - torch.log(torch.tensor(2.0))
    earlier = torch.arange(6) < (rows // 4)[:, None]
    torch.testing.assert_close(two.block_rows(two.prepare(x, None, None), rows)[..., earlier],
                               (content + bias)[..., earlier])
    assert not torch.allclose(whole[..., earlier], (content + bias)[..., earlier])
    two.block_rows(two.prepare(x, None, None), rows)[..., earlier].sum().backward()  # it learns through them
    assert two.wk.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"selector.pieces=3 must divide selector.block_size=4"):
        build_selector("query_block", 1, 8, 8, 24, d_index=4, block_size=4, pieces=3)
    with pytest.raises(ValueError, match=r"selector.pieces=2 splits query_block's key blocks, but "
                                         r"selector=query_bound"):
        build_selector("query_bound", 1, 8, 8, 24, d_index=4, block_size=4, pieces=2)


def test_query_loss_is_zero_at_the_teacher_mass_and_learns_it():
    """Per query: the teacher's mass per key block as scores gives no loss; flat scores some; the first block's
    queries (nothing earlier to choose) none."""
    torch.manual_seed(0)
    T, bs = 12, 4
    rows = torch.arange(T)
    probs = torch.softmax(torch.randn(1, 2, T, T).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")), -1)
    mass = probs.unflatten(-1, (-1, bs)).sum(-1)  # (1, 2, T, 3)
    own = rows // bs
    logits = mass.clamp_min(1e-9).log()
    assert block_selector_loss(logits, mass, own) == pytest.approx(0.0, abs=1e-4)
    assert block_selector_loss(torch.zeros_like(logits), mass, own) > 0.01
    assert block_selector_loss(logits[..., :bs, :], mass[..., :bs, :], own[:bs]) == 0


def test_weighted_query_loss_is_the_kl_of_the_whole_block_distribution():
    """selector.loss=kl_full: the earlier blocks' KL weighted by their share of the mass, plus the own block's share
    -- by the chain rule, KL(teacher's mass over the own and earlier blocks ‖ softmax of the scores over them)."""
    torch.manual_seed(1)
    T, bs = 12, 4
    rows = torch.arange(T)
    probs = torch.softmax(torch.randn(1, 2, T, T).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")), -1)
    mass = probs.unflatten(-1, (-1, bs)).sum(-1)
    own, scores = rows // bs, torch.randn(1, 2, T, 3)
    keep = own > 0
    allowed = torch.arange(3) <= own[:, None]  # the own block and the earlier ones
    p, logq = mass[..., keep, :], scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)[..., keep, :]
    full = (p * (p.clamp_min(1e-12).log() - logq.masked_fill(~allowed[keep], 0))).sum(-1).mean()
    assert block_selector_loss(scores, mass, own, weighted=True) == pytest.approx(full.item(), rel=1e-4)
    assert block_selector_loss(scores, mass, own) > block_selector_loss(scores, mass, own, weighted=True)


def test_cost_counts_every_query_against_the_causal_blocks():
    # T=8, blocks of 4, d_model=2, d_index=3: pooling 8·2, index queries of 8 + keys of 2 blocks (8 + 2)·2·3,
    # (query, block) pairs 4·1 + 4·2 = 12, ·3
    assert formulas.query_block_selector(8, 2, 3, 4, topk_ops=1) == formulas.Cost(macs=16 + 60 + 36, ops=12)
    # pieces=2: keys of 4 half-block means (8 + 4)·2·3, pairs twice ·3, log mean exp 2·2 ops a pair
    assert formulas.query_block_selector(8, 2, 3, 4, topk_ops=1, pieces=2) == formulas.Cost(
        macs=16 + 72 + 72, ops=12 + 48)


def test_query_block_stages_end_to_end(tiny_cfg, tmp_path, teacher_ckpt):
    """selector -> approximator -> evaluation with query_block: it learns from the teacher's per-query block mass;
    the results name the budget in blocks."""
    parts = [f"teacher.ckpt={teacher_ckpt}", "selector=query_block", "selector.block_size=8", "hybrid.layers=all",
             "hybrid.budget=16"]
    sel = train(tiny_cfg("+experiment=distill_selector", *parts, "selector.max_steps=2"), tmp_path / "outputs" / "s")
    assert 0 < sel["val/mass_recall"] <= 1 + 1e-6
    app = train(tiny_cfg("+experiment=distill_approximator", *parts, f"selector.ckpt={sel['checkpoint']}"),
                tmp_path / "outputs" / "a")
    result = train(tiny_cfg("+experiment=evaluate", *parts, f"approximator.ckpt={app['checkpoint']}"), tmp_path / "e")
    assert 0 < result["test/mass_recall"] <= 1 + 1e-6
    assert "(2 blocks of 8 keys" in (tmp_path / "e" / "results.md").read_text()


def test_the_query_block_oracle_keeps_each_querys_own_heaviest_blocks():
    """query_block_oracle: a query's scores are the log of its own attention mass per key block (the per-query
    selector's target), so it keeps its own block and the earlier blocks its attention weighs most."""
    from src.selectors import build_selector

    torch.manual_seed(2)
    T, bs, h = 24, 4, 2
    oracle = build_selector("query_block_oracle", h, 16, 8, T, block_size=bs)
    q, k = torch.randn(1, h, T, 8) * 3, torch.randn(1, h, T, 8) * 3
    probs = torch.softmax((q @ k.transpose(-2, -1) / 8 ** 0.5).masked_fill(torch.ones(T, T).triu(1).bool(),
                                                                            float("-inf")), -1)
    mass = probs.unflatten(-1, (-1, bs)).sum(-1)  # (1, h, T, 6)
    rows = torch.arange(T)
    ctx = oracle.prepare(torch.zeros(1, T, 16), q, k)
    torch.testing.assert_close(oracle.block_rows(ctx, rows).exp(), mass.clamp_min(1e-30))
    choice = oracle.choose(torch.zeros(1, T, 16), q, k, 2)
    for t in range(bs, T):
        earlier = mass[0, :, t, :t // bs].argmax(-1)  # (h,) the heaviest earlier block of each head
        kept = choice.idx[0, :, t][choice.valid[0, :, t]].view(h, -1)
        assert all(set(kept[i].tolist()) == {t // bs, int(earlier[i])} for i in range(h))


@pytest.mark.parametrize("name,pieces,mass", [("query_block", 1, None), ("query_block", 4, 0.7),
                                              ("query_bound", 1, None), ("query_bound", 1, 0.7),
                                              ("quest", 1, None), ("query_moba", 1, 0.7)])
def test_choice_scores_only_the_blocks_up_to_its_rows(name, pieces, mass):
    """choose, chunk by chunk, scores only the blocks up to each chunk's last own block (``upto``): the same choice
    as the causal top-k over every block's score."""
    from src.sparse.choice import causal_block_topk

    torch.manual_seed(0)
    sel = build_selector(name, 2, 16, 8, 200, d_index=4, block_size=16, **({"pieces": pieces} if pieces > 1 else {}))
    for p in sel.parameters():
        torch.nn.init.normal_(p, std=1.0)
    x, rows = torch.randn(2, 200, 16), torch.arange(200)
    q, k = torch.randn(2, 2, 200, 8), torch.randn(2, 2, 200, 8)  # the head's own (quest, query_moba read them)
    full = sel.block_rows(sel.prepare(x, q, k), rows)
    assert full.size(-1) == 13
    ref = causal_block_topk(full, 4, rows // 16, 16, 200, mass)
    got = sel.choose(x, q, k, 4, mass=mass, chunk=37)
    assert torch.equal(got.idx, ref.idx) and torch.equal(got.valid, ref.valid)
    assert sel.block_rows(sel.prepare(x, q, k), rows[:40], upto=3).size(-1) == 3
