"""The block-sparse kernel on FlexAttention: a block choice -> BlockMask (src/sparse/block_mask.py) -> the compiled
``flex_attention``, which reads the chosen key blocks in place (no copy) and skips the others.

Compiled once per shape (``dynamic=False``: a static shape gives the fastest kernel; a new T or batch compiles
again, a few seconds on a CPU). Past dynamo's recompile limit, torch would silently run the *eager*
flex_attention, which materialises T × T scores: the limit is raised and hitting it is made an error instead.
On a CPU, FlexAttention runs forward only (no gradient); on CUDA it runs forward and backward. The same call runs a
per-query choice (``query_flex``: src/sparse/block_mask.py ``query_block_mask``).
"""

from __future__ import annotations

import torch

from src.sparse.block_mask import block_mask
from src.sparse.choice import BlockChoice, QueryBlockChoice

RECOMPILE_LIMIT = 256  # shapes compiled per process (a benchmark grid needs more than dynamo's default 8)

_FLEX = None  # flex_attention, compiled on first use
COMPILED_SHAPES: set[tuple] = set()  # (shape of q, block size, dtype, device, per query) compiled in this process


def compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, RECOMPILE_LIMIT)
        cfg.fail_on_recompile_limit_hit = True  # never fall back to the eager (T × T) flex_attention silently
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


CUDA_BLOCK_MULTIPLE = 64  # FlexAttention's Triton kernel tiles blocks by 64 or 128 (a block of 16 or 48 is refused)


def flex_unavailable(device: torch.device, needs_grad: bool, block_size: int | None = None) -> str | None:
    """Why the compiled flex kernel cannot run here (None: it can), one line naming the fix."""
    if device.type not in ("cpu", "cuda"):
        return f"FlexAttention runs on CPU and CUDA, not {device.type}: use hybrid.kernel=tiles (or auto)"
    if device.type == "cpu" and needs_grad:
        return ("FlexAttention on a CPU runs forward only (no gradient): use hybrid.kernel=tiles to train through "
                "the block-sparse path, or run on CUDA")
    if device.type == "cuda" and block_size is not None and block_size % CUDA_BLOCK_MULTIPLE:
        return (f"selector.block_size={block_size}: FlexAttention's CUDA kernel needs blocks of a multiple of "
                f"{CUDA_BLOCK_MULTIPLE} keys; use 64 or 128, or hybrid.kernel=tiles")
    return None


def shape_key(q: torch.Tensor, block_size: int, per_query: bool = False) -> tuple:
    """What a compiled kernel is specialised to: q's shape, dtype and device, the blocks, and the choice's kind (a
    per-query choice has another mask_mod)."""
    return tuple(q.shape), block_size, q.dtype, str(q.device), per_query


def is_new_shape(q: torch.Tensor, block_size: int, per_query: bool = False) -> bool:
    """Whether ``flex_block_attention`` on this shape (a per-query choice: ``per_query``) will compile first (for
    reporting compile time apart)."""
    return shape_key(q, block_size, per_query) not in COMPILED_SHAPES


def flex_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, choice: BlockChoice | QueryBlockChoice,
                         mask=None) -> torch.Tensor:
    """q, k, v (B, h, T, hs) -> (B, h, T, hs): exact softmax attention over the chosen blocks (causal in the own
    block), per block of queries or, for a QueryBlockChoice, per query. ``mask``: the choice's BlockMask when already
    built (src/sparse/block_mask.py)."""
    reason = flex_unavailable(q.device, torch.is_grad_enabled() and q.requires_grad, choice.block_size)
    if reason:
        raise RuntimeError(reason)
    mask = block_mask(choice, for_backward=q.requires_grad) if mask is None else mask
    COMPILED_SHAPES.add(shape_key(q, choice.block_size, isinstance(choice, QueryBlockChoice)))
    return compiled_flex()(q, k, v, block_mask=mask)
