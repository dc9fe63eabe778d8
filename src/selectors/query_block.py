"""MoBA's gate, learned as ours are: *every query* scores the earlier key blocks and keeps its own top ones.

The block selector (src/selectors/block.py) chooses once per block of queries, from the block's first query, so an
answer in the middle of a block cannot ask for the block that holds its needle. Here each query chooses: per served
head, learned index projections of the layer input (as the indexer's, width d_index) score query t against the mean
index key of every earlier block (or, with ``selector.pieces`` = P, against the mean index keys of the block's P runs
of B/P keys, the block scoring log mean exp of them), plus a learned bias of the distance in blocks; query t keeps its
own block (the keys up to itself, causally masked) and the best n - 1 earlier blocks, n the budget in whole blocks
(``hybrid.budget`` rounded up to ``selector.block_size``), as MoBA's gate does with the head's own keys.
``selector.recent`` earlier blocks just before the own one are always kept (NSA's sliding window); ``hybrid.mass``
keeps only as many as reach that share of the predicted attention, the own block's share a learned function of the
query's input.

Causality: the blocks a query may pick lie wholly before its own block, and its scores read its own input and those
blocks' keys, so no query's output depends on a later token. Every query has its own choice (``choose``: a
QueryBlockChoice, src/sparse/choice.py), which the per-query block-sparse kernels run (``query_tiles``, src/sparse/
query_tiles.py; ``query_flex`` on CUDA); the token kernels take it as keys (``masked``, ``gather``). Θ(T · T/B · P ·
d_index) per head to score.

Distillation (src/stages/distill_selector.py): per query, the teacher's attention mass per key block against the
softmax of the scores -- KL over the earlier blocks, plus the own block's share -- the block selector's target, one
query at a time instead of summed over a block of queries.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from src.costs import formulas as costs
from src.selectors.base import KeySelector
from src.selectors.distance import DistanceBias
from src.selectors.indexer import index_vectors
from src.sparse.choice import QueryBlockChoice, block_keys, causal_block_topk, n_blocks
from src.sparse.selection import Selection

CHOOSE_ROWS = 512  # queries scored at a time by ``choose``: (B, h, 512, T/B · pieces) scores, only the blocks up to
#                   the chunk's last query's (4 x 2048, 2 threads: 32 pieces 69 ms against 81 at 1024; 1 and 16 alike)


def check_blocks(block_size, recent, pieces=1) -> tuple[int, int, int]:
    """selector.block_size, selector.recent and selector.pieces of a per-query block selector, or ValueError naming
    the fix."""
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"selector.block_size={block_size} must be a positive number of keys")
    if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
        raise ValueError(f"selector.recent={recent} must be a number of blocks, 0 or more")
    if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces <= 0 or block_size % pieces:
        raise ValueError(f"selector.pieces={pieces} must divide selector.block_size={block_size} (1: one mean per "
                         "block)")
    return block_size, recent, pieces


class QueryBlockSelector(KeySelector):
    name = "query_block"
    whole_blocks = True  # keeps whole blocks of keys: the budget is counted in them
    query_blocks = True  # every query its own choice of blocks: ``choose`` -> QueryBlockChoice

    @staticmethod
    def cost(T: int, d_model: int, head_dim: int, sizes):
        """Scoring every query against the causal blocks, one head, Θ(T · T/B · d_index)
        (src/costs/formulas.py query_block_selector)."""
        return costs.query_block_selector(T, d_model, sizes.d_index, sizes.block, sizes.topk_ops, sizes.pieces)

    def __init__(self, n_heads: int, d_model: int, d_index: int, block_size: int, recent: int = 0, pieces: int = 1):
        super().__init__()
        self.block_size, self.recent, self.pieces = check_blocks(block_size, recent, pieces)
        self.n_heads, self.d_index = n_heads, d_index
        self.wq = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.wk = nn.Linear(d_model, n_heads * d_index, bias=False)
        self.own = nn.Linear(d_model, n_heads)  # the own block's score (only the dynamic budget reads it)
        self.distance = DistanceBias(n_heads)

    def prepare(self, x, q, k):
        """The inputs (B, T, C), every position's index query (B, h, T, d) and every piece's mean index key
        (B, h, pieces · nb, d, piece-major: piece p of block c at p · nb + c; the index keys are linear in the input,
        so the mean input's); the pieces of a block are its ``pieces`` runs of block_size / pieces keys (one, the
        whole block, by default)."""
        T, size = x.size(1), self.block_size // self.pieces
        nb = n_blocks(T, self.block_size)
        n = nb * self.pieces  # pieces of the whole blocks; the last one's past T are empty
        pad = torch.nn.functional.pad(x, (0, 0, 0, n * size - T)).unflatten(1, (n, size)).sum(2)  # (B, n, C)
        count = (T - torch.arange(n, device=x.device) * size).clamp(min=1, max=size)[:, None]
        means = (pad / count).unflatten(1, (nb, self.pieces)).transpose(1, 2).flatten(1, 2)  # (B, pieces · nb, C)
        return (x, index_vectors(self.wq, x, self.n_heads, self.d_index),
                index_vectors(self.wk, means, self.n_heads, self.d_index))

    def block_rows(self, ctx, rows: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The scores of every key block for the queries at positions ``rows`` (R,) -> (B, h, R, nb); the own
        block's column holds the own block's score, the later blocks' are never used. ``upto``: only the first upto
        blocks' columns (the choice passes its rows' last own block + 1: on a long sequence's first rows the later
        blocks are most of the scoring). With several pieces a block
        scores log mean exp of its pieces' scores: the mass it would hold were each piece's exp its mass, so one
        piece that matches lifts the block as it would a block of its own size (a mean over 64 keys blurs the few
        that tell one needle from another). By hand, piece by piece (``prepare`` puts the pieces outermost): each step
        runs along the blocks in memory, 4x faster than torch.logsumexp over an inner dimension of 8 pieces."""
        x, qi, kb = ctx
        if upto is not None and upto * self.pieces < kb.size(-2):  # the first upto blocks' pieces, piece-major
            kb = kb.unflatten(-2, (self.pieces, -1))[..., :upto, :].flatten(-3, -2)
        scores = (qi[:, :, rows] @ kb.transpose(-2, -1)).div_(math.sqrt(self.d_index))  # (B, h, R, pieces · nb)
        if self.pieces > 1:
            parts = scores.unflatten(-1, (self.pieces, -1)).unbind(-2)  # pieces x (B, h, R, nb)
            top = functools.reduce(torch.maximum, parts)
            total = functools.reduce(torch.add, [(p - top).exp_() for p in parts])
            scores = total.log() + (top - math.log(self.pieces))  # (B, h, R, nb)
        return self.finish_rows(scores, x, rows)

    def finish_rows(self, scores: torch.Tensor, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Content scores (B, h, R, nb) of the queries ``rows`` -> with the distance bias, in place, and the own
        block's column set to the own block's score."""
        own_block = rows // self.block_size
        blocks = torch.arange(scores.size(-1), device=rows.device)  # the bias depends on the own block: rows of a
        scores.add_(self.distance(blocks, len(blocks)).index_select(1, own_block))  # table (passes over T · nb
        #                                                                            scores are most of the selection)
        own = self.own(x[:, rows]).transpose(1, 2)[..., None]  # (B, h, R, 1)
        B, h, R, _ = scores.shape
        return scores.scatter_(-1, own_block.view(1, 1, R, 1).expand(B, h, R, 1), own)

    def score_rows(self, ctx, rows):
        """The token view of the block scores: every key its block's score (B, h, R, T)."""
        T = ctx[0].size(1)
        return self.block_rows(ctx, rows).repeat_interleave(self.block_size, -1)[..., :T]

    def choose_rows(self, ctx, rows: torch.Tensor, n_keep: int, mass: float | None = None) -> QueryBlockChoice:
        """The own block and the n_keep - 1 best earlier blocks of the queries at positions ``rows`` (R,) -> a
        QueryBlockChoice of R rows."""
        T, own = ctx[0].size(1), rows // self.block_size
        scores = self.block_rows(ctx, rows, upto=int(own.max()) + 1 if len(rows) else None)
        choice = causal_block_topk(scores, n_keep, own, self.block_size, T, mass, self.recent)
        return QueryBlockChoice(choice.idx, choice.valid, self.block_size, T)

    def choose(self, x, q, k, n_keep: int, mass: float | None = None, chunk: int = CHOOSE_ROWS) -> QueryBlockChoice:
        """Every query's choice of n_keep blocks (what the per-query kernels run), ``chunk`` queries scored at a
        time."""
        ctx, T = self.prepare(x, q, k), x.size(1)
        rows = torch.arange(T, device=x.device)
        parts = [self.choose_rows(ctx, rows[s:s + chunk], n_keep, mass) for s in range(0, T, chunk)]
        return QueryBlockChoice(torch.cat([p.idx for p in parts], 2), torch.cat([p.valid for p in parts], 2),
                                self.block_size, T)

    def select_rows(self, ctx, rows, top_k, mass=None) -> Selection:
        """Each query's own block and its best earlier blocks, the budget of ``top_k`` keys in whole blocks."""
        choice = self.choose_rows(ctx, rows, max(1, math.ceil(top_k / self.block_size)), mass)
        return block_keys(choice.idx, choice.valid, rows, self.block_size)
