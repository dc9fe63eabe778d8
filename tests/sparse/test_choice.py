"""Block-level choices (src/sparse/choice.py): causal, the own block first, the best earlier blocks, the dynamic budget
and the recent blocks."""

from __future__ import annotations

import pytest
import torch

from src.model import GPTConfig
from src.selectors import build_selector
from src.sparse import (
    causal_block_topk,
    n_blocks,
)
from tests.helpers import H, T, chosen_blocks, random_choice


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


CFG = GPTConfig(vocab_size=19, seq_len=32, n_layer=2, n_head=2, d_model=16)


def test_dynamic_block_budget_counts_the_own_block_first():
    # one query block (row 2) over 3 blocks: predicted shares own 0.6, block 0 0.1, block 1 0.3
    scores = torch.tensor([0.1, 0.3, 0.6]).log().view(1, 1, 1, 3)
    rows = torch.tensor([2])
    kept = {m: chosen_blocks(causal_block_topk(scores, 3, rows, 4, 12, mass=m))[0] for m in (0.5, 0.85, 0.95)}
    assert kept == {0.5: {2}, 0.85: {2, 1}, 0.95: {2, 1, 0}}
    capped = causal_block_topk(scores, 2, rows, 4, 12, mass=0.99)
    assert chosen_blocks(capped)[0] == {2, 1}


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
