"""The sparse-attention library: selections, budgets and the kernels that run them (one concept per file).

* ``selection``  token-level choices and the causal top-K;       ``choice``  block-level choices (MoBA / NSA);
* ``budget``     keys per query, fixed or a fraction of T;       ``mass``    the teacher's attention per key block;
* ``dense``      SDPA and the materialised reference;            ``gather``  select -> gather -> approximate;
* ``block_mask`` + ``flex``  the FlexAttention block-sparse kernel; ``tiles``  the SDPA-on-tiles block-sparse kernel;
* ``query_tiles``  the per-query block-sparse kernel (key block by key block, the parts merged by logsumexp);
* ``attention``  ``SparseAttention``: one layer's sparse heads, on the kernel asked for;
* ``decode``     ``SparseDecoder``: those heads generating one token at a time from the KV cache.
"""

from src.sparse.attention import BLOCK_KERNELS, KERNELS, QUERY_KERNELS, SparseAttention, kernel_problem
from src.sparse.block_mask import block_mask
from src.sparse.budget import Budget
from src.sparse.choice import BlockChoice, QueryBlockChoice, causal_block_topk, ceil_div, concat_choices, n_blocks
from src.sparse.decode import SparseDecoder, decode_problem
from src.sparse.dense import naive_attention, sdpa_attention
from src.sparse.flex import compiled_flex, flex_block_attention, flex_unavailable
from src.sparse.gather import gather_attention, gather_rows
from src.sparse.mass import block_attention_mass
from src.sparse.selection import Selection, causal_mask, causal_topk, selection_mask
from src.sparse.query_tiles import query_tiled_attention
from src.sparse.tiles import tiled_block_attention

__all__ = [
    "BLOCK_KERNELS", "BlockChoice", "Budget", "KERNELS", "QUERY_KERNELS", "QueryBlockChoice", "Selection",
    "SparseAttention", "SparseDecoder", "block_attention_mass", "block_mask", "causal_block_topk", "causal_mask",
    "causal_topk", "ceil_div", "compiled_flex", "concat_choices", "decode_problem", "flex_block_attention",
    "flex_unavailable", "gather_attention", "gather_rows", "kernel_problem", "n_blocks", "naive_attention",
    "query_tiled_attention", "sdpa_attention", "selection_mask", "tiled_block_attention",
]
