"""The per-query block-sparse kernel on SDPA: MoBA's gate, where every query chooses its own key blocks
(src/selectors/query_block.py, a QueryBlockChoice), run as tiles of keys under PyTorch's fused attention kernel.

A block choice serves a whole block of queries with one tile (src/sparse/tiles.py); here the queries of a tile each
chose their own blocks. So for each tile of ``TILE_ROWS`` consecutive queries, the *union* of the blocks they chose
(the tile's own blocks always among them) is copied once into a tile of keys and values (tiles.py's
``gather_blocks``), and an additive mask gives each query exactly its own chosen blocks, keys up to itself; SDPA's
fused CPU kernel runs the tiles of a chunk in one call. Blocks no query of a tile chose are never read. Exact -- the
function of the gather path with softmax (tests: 1e-5) -- causal, and differentiable (index_select and SDPA have
gradients).

The price is the union: every query of a tile scores all of it, so the kernel works union / n times more than the
choice (the FLOP limit counts the choice). Queries that agree -- neighbours asking for the same blocks, as a gate
does on smooth hidden states -- make a union near n blocks and the kernel near the block kernel's rate; queries that
choose independently (random weights) make it every earlier block: dense causal attention under a mask
(docs/costs_and_kernels.md measures both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.sparse.choice import QueryBlockChoice, block_table, ceil_div, n_blocks, ordered_blocks
from src.sparse.tiles import TILE_BYTES, gather_blocks, padded

TILE_ROWS = 64  # queries per tile: one union per 64 queries


def padded_choice(choice: QueryBlockChoice, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The choice's idx, valid (B, h, T, n) extended to ``rows`` queries: a query past T keeps its own block (the
    last one at most), so that its row of the mask is never empty; its output is dropped."""
    idx, valid, T = choice.idx, choice.valid, choice.T
    if rows == T:
        return idx, valid
    last = n_blocks(T, choice.block_size) - 1
    own = (torch.arange(T, rows, device=idx.device) // choice.block_size).clamp(max=last)  # (rows - T,)
    extra = torch.zeros(*idx.shape[:2], rows - T, choice.n, dtype=idx.dtype, device=idx.device)
    extra[..., 0] = own
    first = torch.arange(choice.n, device=idx.device) == 0  # slot 0 alone valid
    return torch.cat((idx, extra), 2), torch.cat((valid, first.expand_as(extra)), 2)


def own_blocks(nt: int, rows: int, block_size: int, nb: int, device) -> torch.Tensor:
    """(nt, nb) bool: the blocks holding the queries of each tile of ``rows`` (a query past the end: the last one)."""
    pos = torch.arange(nt * rows, device=device).view(nt, rows)
    table = torch.zeros(nt, nb, dtype=torch.bool, device=device)
    return table.scatter_(-1, (pos // block_size).clamp(max=nb - 1), True)


def chunks(width: list[int], per_block: int, tile_bytes: int) -> list[tuple[int, int, int]]:
    """Tiles of union widths ``width`` (blocks) -> runs (first, end, widest) of consecutive tiles whose keys and
    values, every tile as wide as the widest (``per_block`` bytes a block), fit ``tile_bytes`` (one tile at least)."""
    out, s = [], 0
    while s < len(width):
        e, widest = s + 1, width[s]
        while e < len(width) and (e + 1 - s) * max(widest, width[e]) * per_block <= tile_bytes:
            widest = max(widest, width[e])
            e += 1
        out.append((s, e, widest))
        s = e
    return out


def query_tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, choice: QueryBlockChoice,
                          rows: int = TILE_ROWS, tile_bytes: int = TILE_BYTES) -> torch.Tensor:
    """q, k, v (B, h, T, hs) -> (B, h, T, hs): exact softmax attention of every query over its own chosen blocks
    (causal in its own block), ``rows`` queries a tile, as many tiles per SDPA call as fill ``tile_bytes``."""
    B, h, T, hs = q.shape
    bs, dev = choice.block_size, q.device
    nb, nt = n_blocks(T, bs), ceil_div(T, rows)
    _, k, v, _ = padded(q, k, v, bs)  # keys and values in whole blocks
    q = F.pad(q, (0, 0, 0, nt * rows - T)).contiguous()  # queries in whole tiles
    idx, valid = padded_choice(choice, nt * rows)  # (B, h, nt · rows, n)
    own = own_blocks(nt, rows, bs, nb, dev)  # (nt, nb): every query keeps its own; the only blocks masked causally
    union = block_table(idx.view(B, h, nt, -1), valid.view(B, h, nt, -1), nb)  # (B, h, nt, nb): read by the tile
    count, order = ordered_blocks(union.to(torch.uint8) + own)  # the own blocks first, then the others chosen
    width, diagonal = count.amax((0, 1)).tolist(), own.sum(-1).tolist()  # per tile: the widest union, own blocks
    q_tiles = q.view(B * h, nt, rows, hs)
    y = torch.empty_like(q)
    y_tiles = y.view(B * h, nt, rows, hs)
    for s, e, U in chunks(width, B * h * bs * hs * q.element_size() * 2, tile_bytes):
        c, D = e - s, max(diagonal[s:e])
        blocks = order[:, :, s:e, :U].long()  # (B, h, c, U): a narrower union's last slots hold blocks none chose
        mine = block_table(idx[:, :, s * rows:e * rows], valid[:, :, s * rows:e * rows], nb)  # (B, h, c · rows, nb)
        mine = mine.view(B, h, c, rows, nb).gather(-1, blocks[:, :, :, None].expand(B, h, c, rows, U))
        mask = torch.zeros(mine.shape, dtype=q.dtype, device=dev).masked_fill_(~mine, float("-inf"))
        mask = mask.repeat_interleave(bs, dim=-1).flatten(0, 1)  # (B · h, c, rows, U · bs): each query its blocks
        key_pos = (blocks[..., :D, None] * bs + torch.arange(bs, device=dev)).view(B * h, c, 1, D * bs)
        query_pos = torch.arange(s * rows, e * rows, device=dev).view(c, rows, 1)
        mask[..., :D * bs].masked_fill_(key_pos > query_pos, float("-inf"))  # causal: only the own blocks can be
        y_tiles[:, s:e] = F.scaled_dot_product_attention(q_tiles[:, s:e], gather_blocks(k, blocks, bs),
                                                         gather_blocks(v, blocks, bs), attn_mask=mask)
    return y[:, :, :T]
