"""A FlexAttention ``BlockMask`` built directly from a block choice (attention-gym's idea, MoBA's sparsity).

``create_block_mask`` evaluates ``mask_mod`` over the whole T × T grid, which costs seconds at long T; here the
block tables come straight from the choice: per query block, the own block is the one *partial* block (causal
inside) and the chosen earlier blocks are *full* blocks (no masking inside). ``mask_mod`` states the same sparsity,
causal AND chosen block, so the kernel's result never depends on which blocks it skips (compiled and eager flex
agree, and a partial block is masked exactly).

Forward only by default: the transposed, per-key-block tables that the backward pass needs are built when
``for_backward`` is set (a CUDA user fine-tuning through the kernel; FlexAttention's CPU kernel has no backward).
"""

from __future__ import annotations

import torch

from src.sparse.choice import BlockChoice, n_blocks


def block_mask(choice: BlockChoice, for_backward: bool = False):
    """BlockChoice (B, h, R, n) of every query block -> BlockMask over (T, T) with blocks of choice.block_size."""
    from torch.nn.attention.flex_attention import BlockMask

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
