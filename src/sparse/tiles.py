"""The block-sparse kernel on SDPA: copy each query block's chosen key blocks into one contiguous tile, then run
PyTorch's fused attention kernel on (query block, tile) pairs -- the fastest block-sparse path on a CPU.

A tile holds the n chosen blocks of one query block, n · block_size keys and values; a small additive mask, the
same for every tile, makes the own block causal (slot 0) and hides the slots a query block does not have yet.
SDPA's fused CPU kernel (flash attention, with a mask since torch 2.3) then runs at 60-70 % of its dense rate on
these tiles, against ~30 % for FlexAttention's generated CPU kernel (README, "which kernel when"). The price is
the copy: n · block_size keys and values per query block, ``TILE_BYTES`` at a time so that a chunk's tiles are
still in cache when the kernel reads them. Differentiable (index_select and SDPA have gradients), on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.sparse.choice import BlockChoice, n_blocks

TILE_BYTES = 4 * 2**20  # gathered keys + values per SDPA call: 2 query blocks of 128 (512-key budget, 8 heads of
#                        64), which fits the 2 MB L2 caches of the 2-core reference machine; 8 MB was no faster
#                        within the noise and costs peak memory (2.8x SDPA's at T = 4096 instead of 1.9x)


def tile_mask(choice: BlockChoice, rows: slice, base: torch.Tensor, all_valid: bool) -> torch.Tensor:
    """The additive mask of the query blocks ``rows``: ``base`` (bs, n · bs) -- slot 0, the own block, causal --
    or, when some of their slots are invalid (``all_valid`` False), (B · h, R, bs, n · bs) with those slots hidden."""
    if all_valid:
        return base
    valid = choice.valid[:, :, rows]  # (B, h, R, n)
    hidden = torch.zeros(valid.shape, dtype=base.dtype, device=base.device).masked_fill_(~valid, float("-inf"))
    return (base + hidden.repeat_interleave(choice.block_size, dim=-1)[..., None, :]).flatten(0, 1)


def padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int):
    """q, k, v (B, h, T, hs) -> the same zero-padded to whole blocks, contiguous (one block of keys is then one row
    of ``gather_blocks``), and the padding. Padded keys lie after every real query: the causal masks hide them."""
    pad = n_blocks(q.size(-2), block_size) * block_size - q.size(-2)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    return *(t.contiguous() for t in (q, k, v)), pad


def gather_blocks(t: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """Key (or value) blocks ``blocks`` (B, h, c, m) of t (B, h, nb · bs, hs), contiguous -> c tiles per (sequence,
    head), (B · h, c, m · bs, hs): each block's bs · hs numbers copied at once (index_select, differentiable)."""
    B, h, L, hs = t.shape
    nb = L // block_size
    flat = blocks + (torch.arange(B * h, device=t.device) * nb).view(B, h, 1, 1)  # row numbers of the blocks
    rows = t.view(B * h * nb, block_size * hs).index_select(0, flat.reshape(-1))
    return rows.view(B * h, blocks.size(2), blocks.size(3) * block_size, hs)


def tile_offsets(choice: BlockChoice, rows: slice) -> torch.Tensor:
    """Row numbers, in a (B · h · nb, bs · hs) view of the padded keys, of the blocks the query blocks ``rows``
    chose: (B · h · c · n,)."""
    B, h = choice.idx.shape[:2]
    nb = n_blocks(choice.T, choice.block_size)
    blocks = choice.idx[:, :, rows]
    return (blocks + (torch.arange(B * h, device=blocks.device) * nb).view(B, h, 1, 1)).reshape(-1)


def chunks(choice: BlockChoice, q: torch.Tensor, chunk: int | None):
    """The kernel's loop: for each chunk of query blocks, (rows, the additive mask of its tiles); ``q`` padded."""
    B, h, L, hs = q.shape
    bs, n = choice.block_size, choice.n
    nb = L // bs
    per_block = B * h * n * bs * hs * q.element_size() * 2
    chunk = chunk or max(1, TILE_BYTES // per_block)
    base = torch.zeros(bs, n * bs, dtype=q.dtype, device=q.device)
    base[:, :bs].masked_fill_(torch.ones(bs, bs, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    complete = choice.valid.all(-1).flatten(0, 1).all(0).tolist()  # per query block: all slots valid (one read)
    for s in range(0, nb, chunk):
        rows = slice(s, min(s + chunk, nb))
        yield rows, tile_mask(choice, rows, base, all(complete[rows]))


class TiledBackward(torch.autograd.Function):
    """The tiles kernel with a backward of its own: chunk by chunk, the chunk's tiles gathered again and its SDPA run
    again under autograd, the tiles' key and value gradients added into one buffer (index_add_). Autograd through
    the forward's gathers would instead give each chunk a gradient as large as the whole k and v and add them all:
    O(T²/chunk) memory traffic, 8x the forward's time at T = 8192."""

    @staticmethod
    def forward(ctx, q, k, v, idx, valid, block_size: int, T: int, chunk):
        choice = BlockChoice(idx, valid, block_size, T)
        ctx.save_for_backward(q, k, v, idx, valid)
        ctx.block_size, ctx.T, ctx.chunk = block_size, T, chunk
        return tiled_forward(q, k, v, choice, chunk)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, idx, valid = ctx.saved_tensors
        choice = BlockChoice(idx, valid, ctx.block_size, ctx.T)
        B, h, T, hs = q.shape
        bs = ctx.block_size
        q, k, v, pad = padded(q, k, v, bs)
        grad = F.pad(grad, (0, 0, 0, pad)).contiguous() if pad else grad.contiguous()
        nb = q.size(-2) // bs
        dq, dk, dv = (torch.zeros_like(t) for t in (q, k, v))
        q_blocks, g_blocks, dq_blocks = (t.view(B * h, nb, bs, hs) for t in (q, grad, dq))
        dk_rows, dv_rows = dk.view(B * h * nb, bs * hs), dv.view(B * h * nb, bs * hs)
        for rows, mask in chunks(choice, q, ctx.chunk):
            flat = tile_offsets(choice, rows)
            with torch.enable_grad():
                qc = q_blocks[:, rows].detach().requires_grad_()
                kt, vt = (t.view(B * h * nb, bs * hs).index_select(0, flat).view(B * h, -1, choice.n * bs, hs)
                          .requires_grad_() for t in (k, v))
                out = F.scaled_dot_product_attention(qc, kt, vt, attn_mask=mask)
                gq, gk, gv = torch.autograd.grad(out, (qc, kt, vt), g_blocks[:, rows])
            dq_blocks[:, rows] = gq
            dk_rows.index_add_(0, flat, gk.reshape(-1, bs * hs))
            dv_rows.index_add_(0, flat, gv.reshape(-1, bs * hs))
        if pad:
            dq, dk, dv = (t[:, :, :T] for t in (dq, dk, dv))
        return dq, dk, dv, None, None, None, None, None


def tiled_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, choice: BlockChoice,
                  chunk: int | None = None) -> torch.Tensor:
    """The kernel's forward (differentiable by autograd too, slowly: ``TiledBackward``)."""
    B, h, T, hs = q.shape
    bs = choice.block_size
    nb = n_blocks(T, bs)
    q, k, v, pad = padded(q, k, v, bs)
    q_blocks = q.view(B * h, nb, bs, hs)  # a query block of every (sequence, head): the tiles' "heads"
    y = torch.empty_like(q)
    y_blocks = y.view(B * h, nb, bs, hs)
    for rows, mask in chunks(choice, q, chunk):
        blocks = choice.idx[:, :, rows]
        y_blocks[:, rows] = F.scaled_dot_product_attention(q_blocks[:, rows], gather_blocks(k, blocks, bs),
                                                           gather_blocks(v, blocks, bs), attn_mask=mask)
    return y[:, :, :T] if pad else y


def tiled_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, choice: BlockChoice,
                          chunk: int | None = None) -> torch.Tensor:
    """q, k, v (B, h, T, hs) -> (B, h, T, hs): exact softmax attention over the chosen blocks (causal in the own
    block). ``chunk`` query blocks per SDPA call (default: as many as fill TILE_BYTES). Differentiable in q, k and v
    (``TiledBackward``)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return TiledBackward.apply(q, k, v, choice.idx, choice.valid, choice.block_size, choice.T, chunk)
    return tiled_forward(q, k, v, choice, chunk)
