"""Block-level selection (MoBA, NSA, SeerAttention): whole blocks of keys, chosen once per block of queries.

Keys and queries are grouped in blocks of ``block_size`` consecutive positions (the last block may be shorter).
Every block of queries keeps its own block (the diagonal: each query sees its block's earlier keys) and the
best-scoring *earlier* blocks, up to ``n`` blocks in all. One choice serves every query of the block, which is
what lets a block-sparse kernel read whole tiles of keys instead of gathering keys one by one.

Causality: a block before the query block lies wholly in the past of each of its queries, and a rule that picks
blocks must read nothing after the block's first query (src/selectors/block.py scores with that query's index
vector). ``causal_block_topk`` can never pick a later block, whatever the scores (NaN and ±inf included).

MoBA's own gate chooses per *query* (src/selectors/query_block.py): the same rule, one row per query, held as a
``QueryBlockChoice``, which the per-query kernels (src/sparse/query_tiles.py, flex.py) run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.sparse.selection import Selection, finite_scores, ranking, top_ranked, within_mass


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up, in integers: the one ceiling division of the project."""
    return -(-a // b)


def n_blocks(T: int, block_size: int) -> int:
    """Blocks of ``block_size`` covering T positions (the last one may be shorter)."""
    return ceil_div(T, block_size)


@dataclass
class BlockChoice:
    idx: torch.Tensor  # (B, h, R, n) key blocks of each of the R = n_blocks(T) query blocks: own block first
    valid: torch.Tensor  # (B, h, R, n) bool: False for the slots of query blocks with fewer than n blocks so far
    block_size: int
    T: int  # sequence length

    @property
    def n(self) -> int:
        return self.idx.size(-1)

    def keep(self) -> torch.Tensor:
        """(B, h, R, nb) bool: key block c is read by query block r."""
        return block_table(self.idx, self.valid, n_blocks(self.T, self.block_size))

    def keys(self, rows: torch.Tensor | None = None) -> Selection:
        """The choice as key positions, per query: Selection (B, h, R', n * block_size) for the queries at positions
        ``rows`` (R',; None: all T). Keys after the query (the rest of its own block, or past T) are invalid."""
        rows = torch.arange(self.T, device=self.idx.device) if rows is None else rows
        own = self.rows_of(rows)
        return block_keys(self.idx[:, :, own], self.valid[:, :, own], rows, self.block_size)

    def rows_of(self, queries: torch.Tensor) -> torch.Tensor:
        """The rows of idx that the queries at positions ``queries`` read: their query block's."""
        return queries // self.block_size


@dataclass
class QueryBlockChoice(BlockChoice):
    """Whole key blocks chosen by *every query* (MoBA's gate, src/selectors/query_block.py): the same blocks and the
    same rule as a BlockChoice -- own block first (causal inside), then earlier blocks, invalid slots pointing at the
    own block -- but one row per query instead of one per block of queries: idx, valid (B, h, T, n), ``keep`` (B, h,
    T, nb). The per-query kernels (src/sparse/query_tiles.py, flex.py) run it; ``keys`` is the gather path's view."""

    def rows_of(self, queries: torch.Tensor) -> torch.Tensor:
        return queries  # each query reads its own row


def block_table(idx: torch.Tensor, valid: torch.Tensor, nb: int) -> torch.Tensor:
    """Chosen blocks idx, valid (..., n) -> (..., nb) bool: True at every valid block (an invalid slot, which points
    at a valid one, cannot unset it)."""
    table = torch.zeros(*idx.shape[:-1], nb, dtype=torch.int32, device=idx.device)
    return table.scatter_add_(-1, idx, valid.int()) > 0


def ordered_blocks(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., nb) bool (or small integers: a rank, higher first) -> how many blocks are set (...,) int32 and the block
    numbers (..., nb) int32, the set ones first, by rank then in ascending order: the layout of FlexAttention's block
    tables, and of a tile's union of blocks (src/sparse/query_tiles.py)."""
    table = table.to(torch.uint8)
    num = (table > 0).sum(-1, dtype=torch.int32)
    return num, table.argsort(dim=-1, descending=True, stable=True).to(torch.int32)


def block_keys(idx: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor, block_size: int) -> Selection:
    """Blocks idx, valid (B, h, R, n) read by the queries at positions ``rows`` (R,) -> their keys, Selection (B, h,
    R, n * block_size); keys after the query (the rest of its own block) are invalid."""
    tok = idx[..., None] * block_size + torch.arange(block_size, device=idx.device)  # (B, h, R, n, bs)
    q = rows.view(-1, 1, 1)
    ok = valid[..., None] & (tok <= q)
    tok = torch.where(ok, tok, q)
    B, h, R, n = idx.shape
    return Selection(idx=tok.reshape(B, h, R, n * block_size), valid=ok.reshape(B, h, R, n * block_size))


def causal_block_topk(scores: torch.Tensor, n_keep: int, rows: torch.Tensor, block_size: int, T: int,
                      mass: float | None = None, recent: int = 0) -> BlockChoice:
    """The own block + the n_keep - 1 best earlier blocks of each query block; with ``mass`` (the dynamic budget),
    only as many of them as reach that share of the predicted attention -- the softmax of the scores over the own
    and the earlier blocks -- counting the own block's share first. ``recent`` earlier blocks just before the own
    one are always kept next to it, whatever their scores (NSA's sliding-window branch; within the budget).

    scores (B, h, R, nb) of the query blocks ``rows`` (R,) against every key block; blocks after a row's own block
    are never chosen, its own is always first. Rows with fewer than n_keep blocks so far (row r has r + 1) mark the
    surplus slots invalid, pointing at the own block; n_keep may exceed nb (a prompt shorter than the length the
    budget is counted at, src/sparse/decode.py): the slots past nb are invalid. -> BlockChoice with R rows (``rows``
    must be all query blocks for a choice the kernels can run; the stages score chunks of rows and concatenate them).
    """
    if n_keep <= 0:
        raise ValueError(f"n_blocks={n_keep} must be 1 or more")
    width = max(n_keep, int(rows.max()) + 1) if len(rows) else n_keep  # blocks after every row: never chosen
    if width > scores.size(-1):  # blocks that do not exist yet: never chosen (they lie after every row)
        scores = F.pad(scores, (0, width - scores.size(-1)))
    scores = scores[..., :width]  # (later rows of a long sequence score many more blocks: ranking them costs time)
    nb = scores.size(-1)
    own = rows[:, None]  # (R, 1)
    blk = torch.arange(nb, device=scores.device)
    ranked = finite_scores(scores).masked_fill_(blk > own, float("-inf"))  # a copy: filled in place from here on
    if recent:  # next after the own block: the recent ones, the nearest first
        near = (blk < own) & (blk >= own - recent)
        ranked = torch.where(near, torch.finfo(ranked.dtype).max / 4 * (1 + (blk - own + recent) / (recent + 1)),
                             ranked)
    ranked.masked_fill_(blk == own, float("inf"))
    idx = top_ranked(ranking(ranked), n_keep)  # (B, h, R, n_keep): own first (+inf), the recent, by score
    slot = torch.arange(n_keep, device=scores.device)
    valid = (slot <= own).expand_as(idx)  # row r has r + 1 candidates
    if mass is not None:
        probs = finite_scores(scores).masked_fill(blk > own, float("-inf")).softmax(-1).gather(-1, idx)
        valid = valid & (within_mass(probs, valid, mass) | (slot <= recent))
    idx = torch.where(valid, idx, own)
    return BlockChoice(idx=idx, valid=valid, block_size=block_size, T=T)


def concat_choices(parts: list[BlockChoice]) -> BlockChoice:
    """Chunks of rows (in order) -> one BlockChoice."""
    first = parts[0]
    return BlockChoice(idx=torch.cat([p.idx for p in parts], 2), valid=torch.cat([p.valid for p in parts], 2),
                       block_size=first.block_size, T=first.T)
