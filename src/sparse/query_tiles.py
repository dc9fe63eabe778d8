"""The per-query block-sparse kernel: MoBA's gate, where every query chooses its own key blocks
(src/selectors/query_block.py, a QueryBlockChoice), run key block by key block, as MoBA's own kernel does.

A block choice serves a whole block of queries with one tile of keys (src/sparse/tiles.py). Here the queries of a
block each chose their own blocks, and one tile per block of queries would have to hold the *union* of their
choices, which for queries that choose independently is every earlier block: dense work under a mask. So the
layout is turned around. Every query attends

* its own block, causally: one fused attention per block of queries, all blocks in one call;
* each earlier block it chose: the queries that chose key block c are gathered into tiles of ``TILE_ROWS`` rows
  (sorted by block, padded only at the end of each block's list), and each tile attends that one block of keys.

Each part yields the output of a softmax over its keys and the log of its normaliser (logsumexp); a query's parts
merge exactly into the softmax over all its keys (weights softmax(lse)), as flash attention merges its tiles. The
work is the choice's pairs alone, whatever the queries chose (the FLOP limit's count), at the rate of 64-key GEMMs;
the copies are the gathered queries and one key and value block per tile. On a CPU the parts run PyTorch's fused
CPU attention kernel (which returns the logsumexp); elsewhere the same parts in plain tensor operations. The
backward (``QueryTiledBackward``) is flash attention's: from the output and each query's logsumexp over *all* its
keys, each part's gradients follow on their own (tile by tile, the same tiles again), added into one buffer per
input. Exact -- the gather path's output and gradients (tests: 1e-5) -- and causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.sparse.choice import QueryBlockChoice, ceil_div, n_blocks
from src.sparse.tiles import gather_blocks, padded

TILE_ROWS = 128  # queries per tile of one key block (64 and 256 were no faster on the 2-core reference machine)
CHUNK_PAIRS = 2**16  # (query, earlier block) pairs per chunk: ~20 MB of gathered fp32 queries of 64 (2**15: 10 %
#                     slower, 2**17: no faster and 120 MB more at T = 16384)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, fused: bool):
    """Softmax attention of q (N, H, S, hs) over k, v (N, H, L, hs) (``causal``: key j <= query j) -> the output
    (N, H, S, hs) and the log of each row's normaliser (N, H, S), fp32: PyTorch's fused CPU kernel when ``fused``,
    else plain (differentiable) tensor operations."""
    if fused:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)
    scores = (q @ k.transpose(-2, -1)).float() * q.size(-1) ** -0.5
    if causal:
        future = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    lse = scores.logsumexp(-1)
    return ((scores - lse[..., None]).exp().to(v.dtype) @ v), lse


def tiles_of(group: torch.Tensor, groups: int, rows: int):
    """The group of every (query, earlier block) pair, ``group`` (P,) -- one key block of one sequence and head, or
    ``groups`` for an invalid slot -> the valid pairs' numbers sorted by group (``order``), each one's slot in tiles of
    ``rows`` queries (tile · rows + row), every tile's group, and the number of tiles: each group's pairs fill whole
    tiles but its last one."""
    count = torch.bincount(group, minlength=groups + 1)[:groups]
    group, order = torch.sort(group, stable=True)
    valid = int(count.sum())  # one read
    group, order = group[:valid], order[:valid]  # not a pair: the last group, sorted last
    tiles = ceil_div(count, rows)  # per group
    first_tile = tiles.cumsum(0) - tiles
    rank = torch.arange(valid, device=group.device) - (count.cumsum(0) - count)[group]  # within its group
    slot = (first_tile[group] + rank // rows) * rows + rank % rows
    tile_group = torch.repeat_interleave(torch.arange(groups, device=group.device), tiles)
    return order, slot, tile_group, len(tile_group)


def tiled_pairs(idx: torch.Tensor, valid: torch.Tensor, s: int, e: int, groups: int, rows: int, T: int, L: int):
    """The (query, earlier block) pairs of rows s..e-1 of (sequence and head, query) -- idx, valid (BH · T, n1) --
    in tiles (``tiles_of``) -> (R · n1,) group of each pair, order, slot, tile_group, tiles and the padded query
    row of every tile row, (tiles · rows,)."""
    n1, nb = idx.size(1), groups // (idx.size(0) // T)
    at = torch.arange(s, e, device=idx.device)  # row of (sequence and head, query)
    group = (at // T * nb)[:, None] + idx[s:e]  # (R, n1): key block of one sequence and head
    group = group.masked_fill(~valid[s:e], groups).flatten()
    order, slot, tile_group, tiles = tiles_of(group, groups, rows)
    query = torch.zeros(tiles * rows, dtype=torch.long, device=group.device)  # padding rows: any query
    query[slot] = at[order // n1] // T * L + at[order // n1] % T
    return group, order, slot, tile_group, tiles, query


def query_tiled_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, choice: QueryBlockChoice,
                        rows: int = TILE_ROWS, chunk_pairs: int = CHUNK_PAIRS, fused: bool | None = None):
    """The kernel's forward: the output (B, h, T, hs) and each query's logsumexp over all its keys (B · h · T,),
    fp32. ``fused``: PyTorch's fused CPU kernel for the parts (default: on a CPU without a gradient)."""
    B, h, T, hs = q.shape
    bs, BH = choice.block_size, B * h
    nb = n_blocks(T, bs)
    L = nb * bs
    if fused is None:
        fused = q.device.type == "cpu" and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    q, k, v, _ = padded(q, k, v, bs)  # (B, h, L, hs), whole blocks
    own, own_lse = attend(*(t.view(BH, nb, bs, hs) for t in (q, k, v)), causal=True, fused=fused)  # each block
    own, own_lse = own.view(BH, L, hs)[:, :T].reshape(BH * T, hs), own_lse.reshape(BH, L)[:, :T].reshape(BH * T)
    # own (BH · T, hs), own_lse (BH · T,): every query over its own block, one row per (sequence and head, query)
    n1 = choice.n - 1  # earlier blocks per query
    if n1 == 0:
        return own.view(B, h, T, hs), own_lse
    idx, valid = choice.idx[..., 1:].reshape(BH * T, n1), choice.valid[..., 1:].reshape(BH * T, n1)
    q_rows = q.view(BH * L, hs)
    y = own if fused else torch.empty_like(own)  # without a gradient each chunk overwrites its own rows once read
    lse_all = own_lse if fused else torch.empty_like(own_lse)
    step = max(1, chunk_pairs // n1)  # queries (of every sequence and head, in order) per chunk
    for s in range(0, BH * T, step):
        e = min(s + step, BH * T)
        group, order, slot, tile_group, tiles, query = tiled_pairs(idx, valid, s, e, BH * nb, rows, T, L)
        if not tiles:  # these queries have no earlier block yet
            y[s:e], lse_all[s:e] = own[s:e], own_lse[s:e]
            continue
        blocks = tile_group.view(1, 1, tiles, 1)  # one key block per tile
        out, lse = attend(q_rows.index_select(0, query).view(tiles, 1, rows, hs),
                          *(gather_blocks(t.view(1, 1, BH * L, hs), blocks, bs).view(tiles, 1, bs, hs)
                            for t in (k, v)), causal=False, fused=fused)  # (tiles, 1, rows, hs), (tiles, 1, rows)
        slot_of = torch.zeros(len(group), dtype=torch.long, device=q.device)  # not a pair: any slot, weight 0
        slot_of[order] = slot
        slot_of = slot_of.view(-1, n1)  # (R, n1): where each query's part over each earlier block lies
        parts = torch.cat((own_lse[s:e, None], lse.flatten()[slot_of].masked_fill(~valid[s:e], float("-inf"))), 1)
        top = parts.amax(-1, keepdim=True)  # the own part is finite: so is the maximum
        w = (parts - top).exp_()  # (R, 1 + n1): each part's share of the query's softmax, once normalised (by hand:
        total = w.sum(-1, keepdim=True)  # softmax and logsumexp over 1 + n1 columns cost 4x as much on a CPU)
        lse_c = (total.log() + top)[:, 0]
        w = w.div_(total).to(own.dtype)
        out = out.view(tiles * rows, hs)
        y_c = own[s:e] * w[:, :1]
        for j in range(n1):  # slot by slot: one (R, hs) gather at a time
            y_c.addcmul_(out.index_select(0, slot_of[:, j]), w[:, j + 1:j + 2])
        y[s:e], lse_all[s:e] = y_c, lse_c
    return y.view(B, h, T, hs), lse_all


def part_grads(q, k, v, dy, lse, delta, causal: bool, real=None):
    """Flash attention's backward of one part, q, dy (N, S, hs) against k, v (N, K, hs), given each query's
    logsumexp over all its keys and delta = rowsum(dy · y) (N, S), fp32 -> dq, dk, dv. ``real`` (N, S) bool hides
    padding rows."""
    scale = q.size(-1) ** -0.5
    scores = (q @ k.transpose(-2, -1)).float() * scale
    if causal:
        scores.masked_fill_(torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).triu(1),
                            float("-inf"))
    p = (scores - lse[..., None]).exp_()  # (N, S, K): the query's softmax weights on these keys
    if real is not None:
        p.mul_(real[..., None])
    dv = p.to(v.dtype).transpose(-2, -1) @ dy
    ds = p.mul_((dy @ v.transpose(-2, -1)).float().sub_(delta[..., None])).mul_(scale).to(q.dtype)
    return ds @ k, ds.transpose(-2, -1) @ q, dv


class QueryTiledBackward(torch.autograd.Function):
    """The per-query kernel with flash attention's backward: from y and each query's logsumexp over all its keys,
    the own blocks' gradients at once, then the earlier blocks' tile by tile (the forward's tiles again), each
    added into one buffer for q, k and v (index_add_) -- no gradient as large as k per chunk, as autograd through
    the forward's gathers would give."""

    @staticmethod
    def forward(ctx, q, k, v, idx, valid, block_size: int, T: int, rows: int, chunk_pairs: int):
        choice = QueryBlockChoice(idx, valid, block_size, T)
        y, lse = query_tiled_forward(q, k, v, choice, rows, chunk_pairs, fused=q.device.type == "cpu")
        ctx.save_for_backward(q, k, v, idx, valid, y, lse)
        ctx.block_size, ctx.rows, ctx.chunk_pairs = block_size, rows, chunk_pairs
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, idx, valid, y, lse = ctx.saved_tensors
        B, h, T, hs = q.shape
        bs, BH, rows = ctx.block_size, B * h, ctx.rows
        nb = n_blocks(T, bs)
        L = nb * bs
        delta = (dy.float() * y.float()).sum(-1).reshape(BH * T)  # rowsum(dy · y), each query
        q, k, v, pad = padded(q, k, v, bs)
        dy = (F.pad(dy, (0, 0, 0, pad)) if pad else dy).contiguous()
        lse_p, delta_p = (F.pad(t.view(BH, T), (0, pad)) if pad else t.view(BH, T) for t in (lse, delta))
        # own blocks, all at once (padding rows: dy = 0 and delta = 0 give them no gradient)
        dq, dk, dv = (t.view(BH, nb, bs, hs).clone() for t in part_grads(
            *(t.view(BH * nb, bs, hs) for t in (q, k, v, dy)), lse_p.reshape(BH * nb, bs),
            delta_p.reshape(BH * nb, bs), causal=True))
        n1 = idx.size(-1) - 1
        if n1:
            idx, valid = idx[..., 1:].reshape(BH * T, n1), valid[..., 1:].reshape(BH * T, n1)
            q_rows, dy_rows, dq_rows = q.view(BH * L, hs), dy.view(BH * L, hs), dq.view(BH * L, hs)
            lse_rows, delta_rows = lse_p.reshape(BH * L), delta_p.reshape(BH * L)
            k_rows, v_rows = k.view(BH * nb, bs * hs), v.view(BH * nb, bs * hs)
            dk_rows, dv_rows = dk.view(BH * nb, bs * hs), dv.view(BH * nb, bs * hs)
            step = max(1, ctx.chunk_pairs // n1)
            for s in range(0, BH * T, step):
                e = min(s + step, BH * T)
                _, order, slot, tile_group, tiles, query = tiled_pairs(idx, valid, s, e, BH * nb, rows, T, L)
                if not tiles:
                    continue
                real = torch.zeros(tiles * rows, dtype=torch.bool, device=q.device)
                real[slot] = True
                q_t, dy_t = (t.index_select(0, query).view(tiles, rows, hs) for t in (q_rows, dy_rows))
                k_t, v_t = (t.index_select(0, tile_group).view(tiles, bs, hs) for t in (k_rows, v_rows))
                gq, gk, gv = part_grads(q_t, k_t, v_t, dy_t, lse_rows[query].view(tiles, rows),
                                        delta_rows[query].view(tiles, rows), causal=False,
                                        real=real.view(tiles, rows))
                dq_rows.index_add_(0, query, gq.view(-1, hs))
                dk_rows.index_add_(0, tile_group, gk.reshape(tiles, bs * hs))
                dv_rows.index_add_(0, tile_group, gv.reshape(tiles, bs * hs))
        dq, dk, dv = (t.view(B, h, L, hs)[:, :, :T] for t in (dq, dk, dv))
        return dq, dk, dv, None, None, None, None, None, None


def query_tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, choice: QueryBlockChoice,
                          rows: int = TILE_ROWS, chunk_pairs: int = CHUNK_PAIRS) -> torch.Tensor:
    """q, k, v (B, h, T, hs) -> (B, h, T, hs): exact softmax attention of every query over its own chosen blocks
    (causal in its own block); ``rows`` queries a tile, about ``chunk_pairs`` (query, earlier block) pairs at once.
    Differentiable in q, k and v (``QueryTiledBackward``)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return QueryTiledBackward.apply(q, k, v, choice.idx, choice.valid, choice.block_size, choice.T, rows,
                                        chunk_pairs)
    return query_tiled_forward(q, k, v, choice, rows, chunk_pairs)[0]
