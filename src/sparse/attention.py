"""``SparseAttention``: the sparse heads of one layer, selection to output, on one of six kernels.

The one entry point that the hybrid model (src/hybrid.py), the distillation stages and the benchmark all run:

* ``gather`` -- any selector, any approximator: per chunk of queries, select -> gather keys -> approximate
  (src/sparse/gather.py); a block choice is expanded to its keys. General and slow.
* ``flex`` -- a block selector with exact softmax: the choice as a FlexAttention BlockMask, compiled kernel
  (src/sparse/flex.py). Reads blocks in place; CPU forward only, CUDA forward and backward.
* ``tiles`` -- a block selector with exact softmax: the chosen blocks copied into tiles, SDPA's fused kernel
  (src/sparse/tiles.py). The fastest on a CPU; differentiable everywhere.
* ``query_tiles`` -- a selector whose every query chooses whole blocks (query_block, MoBA's gate) with exact
  softmax: key block by key block, the queries that chose it gathered into tiles, each part's softmax merged by its
  logsumexp (src/sparse/query_tiles.py). Only the chosen pairs' work; differentiable everywhere.
* ``query_flex`` -- the same per-query choice on FlexAttention: a BlockMask of the blocks any query of a block
  chose, a per-query mask_mod (src/sparse/block_mask.py); it works on that union. CPU forward only, CUDA forward
  and backward.
* ``masked`` -- any selector with exact softmax: the selection as a boolean mask over each chunk of queries' scores
  against all keys (src/sparse/masked.py). Dense work, no gather: the fast way to run a token selector.
* ``auto`` -- with exact softmax, a block-sparse kernel when the selector picks blocks (``flex`` on CUDA, ``tiles``
  elsewhere) or every query picks blocks (``query_flex`` on CUDA, ``query_tiles`` elsewhere), ``masked`` for a token
  selector; ``gather`` for any other approximator.

For the same choice every kernel gives the same output (tests: 1e-5), and with every key kept they equal SDPA.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from src.sparse.block_mask import block_mask
from src.sparse.budget import Budget
from src.sparse.choice import BlockChoice, QueryBlockChoice
from src.sparse.decode import SparseDecoder
from src.sparse.flex import flex_block_attention, flex_unavailable
from src.sparse.gather import chunk_rows, gather_attention
from src.sparse.masked import masked_attention
from src.sparse.query_tiles import query_tiled_attention
from src.sparse.selection import Selection
from src.sparse.tiles import tiled_block_attention

KERNELS = ("auto", "gather", "flex", "tiles", "query_flex", "query_tiles", "masked")
BLOCK_KERNELS = ("flex", "tiles")  # run a choice per block of queries (selector=block and its baselines)
QUERY_KERNELS = ("query_flex", "query_tiles")  # run a choice of whole blocks per query (selector=query_block)
FLEX_KERNELS = ("flex", "query_flex")


def kernel_problem(kernel: str, selector: nn.Module, approximator: nn.Module, selector_name: str = "",
                   approximator_name: str = "", budget: Budget | None = None) -> str | None:
    """Why ``kernel`` (and ``budget``) cannot serve this selector and approximator (None: it can), as one line
    naming the fix."""
    if kernel not in KERNELS:
        return f"hybrid.kernel={kernel!r} is unknown: use one of {', '.join(KERNELS)}"
    if budget is not None and budget.mass is not None and not getattr(selector, "predicts_mass", True):
        return (f"hybrid.mass={budget.mass} keeps keys by the attention a selector predicts, but selector="
                f"{selector_name or 'this one'} ranks keys by position only: unset hybrid.mass, or use a selector "
                "that scores content (indexer, block, oracle, block_oracle)")
    if kernel == "masked" and not getattr(approximator, "exact_softmax", False):
        return (f"hybrid.kernel=masked computes exact softmax attention, but approximator="
                f"{approximator_name or 'this one'} is another function: use approximator=softmax, or "
                "hybrid.kernel=gather (or auto)")
    if kernel in BLOCK_KERNELS + QUERY_KERNELS:
        name, per_query = selector_name or "this one", kernel in QUERY_KERNELS
        query_choice = getattr(selector, "query_blocks", False)
        if not query_choice and not getattr(selector, "picks_blocks", False):
            return (f"hybrid.kernel={kernel} runs whole blocks of keys{' chosen per query' * per_query}, but selector="
                    f"{name} picks single keys: use selector={'query_block' if per_query else 'block'}, or "
                    "hybrid.kernel=gather (or auto)")
        if query_choice != per_query:
            runs, chooses, other = (
                ("a choice of blocks per query", "per block of queries", kernel.removeprefix("query_")) if per_query
                else ("one choice per block of queries", "per query", f"query_{kernel}"))
            return (f"hybrid.kernel={kernel} runs {runs}, but selector={name} chooses {chooses}: use "
                    f"hybrid.kernel={other} (or auto)")
        if not getattr(approximator, "exact_softmax", False):
            return (f"hybrid.kernel={kernel} computes exact softmax attention, but approximator="
                    f"{approximator_name or 'this one'} is another function: use approximator=softmax, or "
                    "hybrid.kernel=gather (or auto)")
    return None


class SparseAttention(nn.Module):
    """Selector + approximator under a key budget: forward(x, q, k, v) -> the served heads' outputs."""

    def __init__(self, selector: nn.Module, approximator: nn.Module, budget: Budget, kernel: str = "auto",
                 chunk: int | None = None):
        super().__init__()
        problem = kernel_problem(kernel, selector, approximator, budget=budget)
        if problem:
            raise ValueError(problem)
        self.selector, self.approximator, self.budget, self.kernel, self.chunk = (
            selector, approximator, budget, kernel, chunk)
        self.picks_blocks = getattr(selector, "picks_blocks", False)
        self.query_blocks = getattr(selector, "query_blocks", False)  # a choice of blocks per query

    def problem_on(self, device: torch.device, needs_grad: bool = False, kernel: str | None = None) -> str | None:
        """Why this module's kernel (or ``kernel``) cannot serve its parts on ``device`` (None: it can), one line
        naming the fix."""
        kernel = kernel or self.kernel
        if kernel != self.kernel:
            problem = kernel_problem(kernel, self.selector, self.approximator)
            if problem:
                return problem
        if kernel in FLEX_KERNELS:
            return flex_unavailable(torch.device(device), needs_grad, self.selector.block_size)
        return None

    def kernel_for(self, q: torch.Tensor) -> str:
        """The kernel this call runs: ``auto`` resolved for q's device and whether a gradient is needed."""
        return self.kernel_for_device(q.device, torch.is_grad_enabled() and q.requires_grad)

    def kernel_for_device(self, device: torch.device, needs_grad: bool = False) -> str:
        if self.kernel != "auto":
            return self.kernel
        if not getattr(self.approximator, "exact_softmax", False):
            return "gather"
        if not (self.picks_blocks or self.query_blocks):
            return "masked"
        usable = not flex_unavailable(device, needs_grad, self.selector.block_size)
        kernel = "flex" if device.type == "cuda" and usable else "tiles"
        return f"query_{kernel}" if self.query_blocks else kernel

    def keys_read(self, T: int) -> int:
        """Keys each query may read at length T: the budget, in whole blocks for a selector that keeps whole blocks
        (src/sparse/budget.py ``Budget.keys_read``)."""
        return self.budget.keys_read(T, self.selector.block_size if getattr(self.selector, "whole_blocks", False)
                                     else None)

    def choose(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
               length: int | None = None) -> BlockChoice | QueryBlockChoice:
        """A block selector's choice for every block of queries (a per-query block selector's: for every query),
        under the budget counted at ``length`` (default: x's T; generation counts it at the model's T, whatever the
        prompt's length)."""
        return self.selector.choose(x, q, k, self.budget.blocks(length or x.size(1), self.selector.block_size),
                                    self.budget.mass)

    def selection(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> Selection:
        """Every query's keys, token level (B, h, T, K): for the metrics and the teacher-forced stages."""
        if self.picks_blocks:
            return self.choose(x, q, k).keys()
        return self.selector.select(x, q, k, self.keys_read(x.size(1)), self.budget.mass)

    def decode(self, x: torch.Tensor, q: torch.Tensor, cache) -> torch.Tensor:
        """Generation against a KV cache (src/model.py LayerCache) whose first h heads are the served ones, the new
        tokens' keys and values already written: x (B, Tn, C), q (B, h, Tn, hs) -> (B, h, Tn, hs). The prompt, at
        position 0, runs as one forward pass (the budget counted at the cache's length) and leaves a SparseDecoder
        in ``cache.state``; after it, one token per call reads only the keys that decoder chooses."""
        h, Tn = q.size(1), q.size(2)
        if cache.pos == 0:
            y = self(x, q, cache.k[:, :h, :Tn], cache.v[:, :h, :Tn], length=cache.k.size(-2))
            cache.state = SparseDecoder(self, x, q, cache.k, cache.v)
            return y
        return cache.state.step(x, q, cache.k, cache.v, cache.pos)

    def forward(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                phases=None, length: int | None = None) -> torch.Tensor:
        """x (B, T, C) the layer input; q, k, v (B, h, T, hs) of the served heads -> y (B, h, T, hs). ``phases``: a
        src.bench.timing.Phases that receives the time of selection, mask building and kernel. ``length``: the length
        the budget is counted at (default T; a prompt's prefill counts it at the model's T, as every later token
        does, src/sparse/decode.py)."""
        phase = phases or (lambda name: contextlib.nullcontext())
        B, h, T, hs = q.shape
        kernel = self.kernel_for(q)
        if self.picks_blocks or kernel in QUERY_KERNELS:
            with phase("selection"):
                choice = self.choose(x, q, k, length)
            if kernel in FLEX_KERNELS:
                with phase("mask"):
                    mask = block_mask(choice, for_backward=torch.is_grad_enabled() and q.requires_grad)
                with phase("kernel"):
                    return flex_block_attention(q, k, v, choice, mask)
            if kernel in ("tiles", "query_tiles"):
                with phase("kernel"):
                    return (tiled_block_attention if kernel == "tiles" else query_tiled_attention)(q, k, v, choice)
            slots, cols, select = choice.n * choice.block_size, 0, choice.keys
        else:
            with phase("selection"):
                ctx = self.selector.prepare(x, q, k)
            K = self.keys_read(length or T)
            slots, cols = K, T
            select = lambda rows: self.selector.select_rows(ctx, rows, K, self.budget.mass)  # noqa: E731
        if kernel == "masked":
            cols = T  # scores of every key; the selection indices as for gather
        chunk = chunk_rows(B, h, T, hs, slots, cols, q.element_size(), self.chunk)

        def timed_select(rows: torch.Tensor) -> Selection:
            with phase("selection"):
                return select(rows)

        with phase("kernel"):
            if kernel == "masked":
                return masked_attention(timed_select, q, k, v, chunk)
            return gather_attention(timed_select, self.approximator, q, k, v, chunk)
