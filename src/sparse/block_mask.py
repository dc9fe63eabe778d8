"""A FlexAttention ``BlockMask`` built directly from a block choice (attention-gym's idea, MoBA's sparsity).

``create_block_mask`` evaluates ``mask_mod`` over the whole T × T grid, which costs seconds at long T; here the
block tables come straight from the choice: per query block, the own block is the one *partial* block (causal
inside) and the chosen earlier blocks are *full* blocks (no masking inside). ``mask_mod`` states the same sparsity,
causal AND chosen block, so the kernel's result never depends on which blocks it skips (compiled and eager flex
agree, and a partial block is masked exactly).

A per-query choice (QueryBlockChoice, MoBA's gate: src/selectors/query_block.py) gives a query block the blocks any
of its queries chose: *full* where every one of them chose it (an earlier block), *partial* otherwise (the own block,
and the blocks only some chose), and ``mask_mod`` reads the per-query table, causal AND chosen by this query.

Forward only by default: the transposed, per-key-block tables that the backward pass needs are built when
``for_backward`` is set (a CUDA user fine-tuning through the kernel; FlexAttention's CPU kernel has no backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.sparse.choice import BlockChoice, QueryBlockChoice, n_blocks, ordered_blocks


def block_mask(choice: BlockChoice | QueryBlockChoice, for_backward: bool = False):
    """BlockChoice (B, h, R, n) of every query block -> BlockMask over (T, T) with blocks of choice.block_size; a
    QueryBlockChoice (B, h, T, n) of every query: ``query_block_mask``."""
    from torch.nn.attention.flex_attention import BlockMask

    if isinstance(choice, QueryBlockChoice):
        return query_block_mask(choice, for_backward)
    B, h, R, n = choice.idx.shape
    bs, T, dev = choice.block_size, choice.T, choice.idx.device
    nb = n_blocks(T, bs)
    if R != nb:
        raise ValueError(f"a block mask needs the choice of every query block ({nb}), got {R}")
    own = choice.idx[..., :1].to(torch.int32)  # (B, h, R, 1): slot 0 is always the own (diagonal) block
    earlier_valid = choice.valid[..., 1:]  # valid slots come first (causal_block_topk), so a count is enough
    full_num = earlier_valid.sum(-1, dtype=torch.int32)  # (B, h, R)
    # the kernels read the first `num` indices of each row; the tables are nb wide, as BlockMask expects
    full_idx = torch.zeros(B, h, R, nb, dtype=torch.int32, device=dev)
    full_idx[..., : n - 1] = torch.where(earlier_valid, choice.idx[..., 1:], 0).to(torch.int32)
    partial_idx = torch.zeros(B, h, R, nb, dtype=torch.int32, device=dev)
    partial_idx[..., :1] = own
    partial_num = torch.ones(B, h, R, dtype=torch.int32, device=dev)
    keep = choice.keep()  # (B, h, R, nb)

    def mask_mod(b, hd, q_idx, kv_idx):
        return (q_idx >= kv_idx) & keep[b, hd, q_idx // bs, kv_idx // bs]

    return BlockMask.from_kv_blocks(partial_num, partial_idx, full_num, full_idx, BLOCK_SIZE=bs, mask_mod=mask_mod,
                                    seq_lengths=(T, T), compute_q_blocks=for_backward)


def query_block_mask(choice: QueryBlockChoice, for_backward: bool = False):
    """QueryBlockChoice (B, h, T, n) of every query -> BlockMask over (T, T) with blocks of choice.block_size: per
    query block, the blocks all its queries chose full, the others any chose (its own among them) partial."""
    from torch.nn.attention.flex_attention import BlockMask

    bs, T = choice.block_size, choice.T
    nb = n_blocks(T, bs)
    B, h = choice.idx.shape[:2]
    keep = F.pad(choice.keep(), (0, 0, 0, nb * bs - T))  # (B, h, nb · bs, nb): a row per query, padded ones empty
    rows = keep.view(B, h, nb, bs, nb)
    real = (torch.arange(nb * bs, device=keep.device) < T).view(nb, bs, 1)  # the padded queries choose nothing
    full = (rows | ~real).all(3) & ~torch.eye(nb, dtype=torch.bool, device=keep.device)  # the own block: causal
    full_num, full_idx = ordered_blocks(full)
    partial_num, partial_idx = ordered_blocks(rows.any(3) & ~full)

    def mask_mod(b, hd, q_idx, kv_idx):
        return (q_idx >= kv_idx) & keep[b, hd, q_idx, kv_idx // bs]

    return BlockMask.from_kv_blocks(partial_num, partial_idx, full_num, full_idx, BLOCK_SIZE=bs, mask_mod=mask_mod,
                                    seq_lengths=(T, T), compute_q_blocks=for_backward)
