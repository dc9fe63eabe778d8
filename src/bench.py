"""Measured speed and memory of ONE attention layer, dense against sparse: ``python -m src.bench``.

What is timed: the forward pass of one attention layer, all heads, from q, k, v (B, nh, T, hs) and the layer
input x (B, T, C) to the heads' outputs (B, nh, T, hs). The Q/K/V and output projections are left out: they are
the same for every variant. Under torch.no_grad, median of ``--repeats`` runs after ``--warmup`` runs.

* ``sdpa``  F.scaled_dot_product_attention(is_causal=True): the baseline of every speed-up;
* ``naive`` the materialised causal softmax(QKᵀ/√hs)V;
* ``SELECTOR+APPROXIMATOR`` sparse attention, selection INCLUDED in the time, untrained random weights (speed does
  not depend on training): the selector (src/selectors/) scores keys, causal top-k, the selected keys and values
  are gathered, the approximator (src/approximators/) makes the output. The default ones are ``mlp+mlp`` (the
  prototype), ``indexer+softmax`` and ``block+softmax`` (the block selector keeps ceil(k / block) whole blocks:
  k rounded up to whole blocks, as src/costs.py counts it); every selector+approximator pair is available;
* ``block+flex`` the block selector's choice (one per block of queries) as a FlexAttention BlockMask, run with the
  compiled ``flex_attention`` kernel: a block-sparse kernel, no gather. Compiled once per shape; the compile time
  is reported apart and never timed.

Long sequences: queries are processed ``--chunk`` at a time (fewer when one chunk's scores and gathered keys and
values would exceed CHUNK_BYTES), so the T×T selector scores never exist whole. A cell is skipped, and recorded
with the reason, when its estimated memory exceeds ``--max-gb``, when one run of it is predicted (time ∝ T², from
the variant's previous T) to take longer than ``--max-seconds`` (which also stops a cell's repeats), or when
``--max-total-seconds`` is spent.

Peak memory (MB = 10⁶ bytes) is the most memory allocated at once during one forward, above what was live before
it (inputs and weights excluded; intermediates and the output counted), from a separate, untimed run: on CUDA
torch.cuda.max_memory_allocated; on CPU the profiler's allocator events (torch.profiler, profile_memory=True),
which see every tensor allocation of PyTorch's CPU allocator, compiled kernels' buffers included.

The default grid (256d/4h, 512d/8h and 1024d/16h; T = 256 … 16384) takes about 20 minutes on 2 CPU cores;
``--quick`` (512d/8h, T = 256 and 1024) under a minute. Writes bench.csv, bench.json (machine and settings), bench.md
and bench.png to ``--out``. Bad arguments end with
one line ``error: ...`` and exit status 2. Functions for other code: ``measure``, ``run``, ``crossover``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.approximators import APPROXIMATORS, build_approximator
from src.errors import UserError
from src.model import causal_attention_probs
from src.selectors import SELECTORS, Selection, build_selector, causal_topk
from src.selectors.block import BlockChoice, BlockSelector, block_keys, n_blocks

DEFAULT_VARIANTS = ("sdpa", "naive", "mlp+mlp", "indexer+softmax", "block+softmax", "block+flex")
VARIANTS = ("sdpa", "naive", *(f"{s}+{a}" for s in SELECTORS for a in APPROXIMATORS), "block+flex")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")

HIDDEN = 64  # mlp selector and approximator hidden width (the prototype's 64, as conf/selector|approximator)
D_INDEX = 16  # indexer and block selector index width (conf/selector/*.yaml)
CHUNK = 512  # queries processed at a time by the sparse variants ...
CHUNK_BYTES = 512 * 10**6  # ... or fewer, so one chunk's scores + gathered keys/values stay under 512 MB
MAX_GB = 8.0  # skip a cell whose estimated memory (inputs, weights, working memory) exceeds this
MAX_SECONDS = 30.0  # per cell: stop repeating after this long; skip a cell whose one run should take longer
QUICK = dict(seq_lens=(256, 1024), repeats=3)  # --quick (512d / 8 heads only): under a minute on 2 CPU cores


# --------------------------------------------------------------------------------------------------------------
# the variants


def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """src.selectors.gather_keys by whole rows: t (B, h, T, hs) at idx (B, h, R, K) -> (B, h, R, K, hs).

    Equal to gather_keys (a test checks); index_select copies each key's hs contiguous values at once, which on a
    CPU is about 1.5× faster than torch.gather's element-by-element indexing: the fairest gather we have.
    """
    B, h, T, hs = t.shape
    offset = (torch.arange(B * h, device=t.device) * T).view(B, h, 1, 1)  # row of (b, head, 0) in the flat view
    return t.reshape(B * h * T, hs).index_select(0, (idx + offset).reshape(-1)).view(*idx.shape, hs)


class GatherAttention(nn.Module):
    """Selector -> causal top-k -> gather -> approximator, ``chunk`` queries at a time (nothing T×T whole)."""

    def __init__(self, selector: str, approximator: str, d_model: int, n_head: int, T: int, top_k: int,
                 block_size: int, chunk: int):
        super().__init__()
        hs = d_model // n_head
        self.kind, self.top_k, self.chunk = selector, top_k, chunk
        self.selector = build_selector(selector, n_head, d_model, hs, T, hidden=HIDDEN, d_index=D_INDEX,
                                       block_size=block_size)
        self.n_blocks = min(n_blocks(T, block_size), -(-top_k // block_size))  # block: whole blocks kept
        slots = self.n_blocks * block_size if selector == "block" else top_k
        self.approximator = build_approximator(approximator, n_head, hs, slots, hidden=HIDDEN)
        self.needs_keys = approximator != "mlp"  # the mlp approximator reads the values only

    def prepare(self, x, q, k):
        """What every chunk reads, computed once for all queries."""
        s = self.selector
        if self.kind == "mlp":  # the hidden layer of the position MLP, (B, h, T, hidden)
            return torch.relu(torch.einsum("bhtd,hde->bhte", q, s.w1) + s.b1)
        if self.kind == "indexer":  # index queries and keys, (B, h, T, d_index) each
            B, T, _ = x.shape
            return tuple(w(x).view(B, T, s.n_heads, s.d_index).transpose(1, 2) for w in (s.wq, s.wk))
        if self.kind == "block":  # index queries (B, h, T, d_index) and block keys (B, h, nb, d_index)
            return s.block_index(x)
        return q, k  # oracle

    def select_rows(self, ctx, start: int, end: int) -> Selection:
        """The selection of the queries start..end-1: idx, valid (B, h, end - start, slots)."""
        s, rows = self.selector, torch.arange(start, end, device=ctx[0].device)
        if self.kind == "block":
            return block_keys(s.choose(ctx[0][:, :, start:end], ctx[1], rows, self.n_blocks), s.block_size)
        if self.kind == "mlp":
            scores = torch.einsum("bhte,hes->bhts", ctx[:, :, start:end], s.w2) + s.b2  # (B, h, R, T)
        elif self.kind == "indexer":
            scores = ctx[0][:, :, start:end] @ ctx[1].transpose(-2, -1) / math.sqrt(s.d_index)
        else:
            scores = ctx[0][:, :, start:end] @ ctx[1].transpose(-2, -1) / math.sqrt(ctx[0].size(-1))
        return causal_topk(scores, self.top_k, rows)

    def forward(self, x, q, k, v):
        T = q.size(-2)
        ctx = self.prepare(x, q, k)
        y = torch.empty_like(q)  # (B, h, T, hs)
        for start in range(0, T, self.chunk):
            end = min(start + self.chunk, T)
            sel = self.select_rows(ctx, start, end)
            k_sel = gather_rows(k, sel.idx) if self.needs_keys else None  # (B, h, R, slots, hs)
            y[:, :, start:end] = self.approximator(q[:, :, start:end], k_sel, gather_rows(v, sel.idx), sel.valid)
        return y


def flex_block_mask(choice: BlockChoice, T: int, block_size: int):
    """A per-query-block BlockChoice (B, h, nb, n) -> FlexAttention BlockMask.

    The chosen blocks before the diagonal are "full" blocks (no masking inside); the diagonal block is the one
    partial block of each row. mask_mod states the same sparsity (causal AND chosen block), so that the
    kernel's result does not depend on which blocks it skips (eager and compiled flex agree). Forward only: the
    transposed (per key block) tables that the backward pass needs are not built (compute_q_blocks=False).
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, h, nb, _ = choice.idx.shape
    dev = choice.idx.device
    keep = torch.zeros(B, h, nb, nb, dtype=torch.int32, device=dev)
    keep = keep.scatter_add_(-1, choice.idx, choice.valid.int()) > 0  # (B, h, nb, nb); add: invalid can't unset
    earlier = keep & torch.ones(nb, nb, dtype=torch.bool, device=dev).tril(-1)
    full_num = earlier.sum(-1, dtype=torch.int32)  # (B, h, nb)
    full_idx = torch.argsort(earlier.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    diag = torch.arange(nb, dtype=torch.int32, device=dev).view(1, 1, nb, 1).expand(B, h, nb, nb).contiguous()
    partial_num = torch.ones(B, h, nb, dtype=torch.int32, device=dev)

    def mask_mod(b, hd, q_idx, kv_idx):
        return (q_idx >= kv_idx) & keep[b, hd, q_idx // block_size, kv_idx // block_size]

    return BlockMask.from_kv_blocks(partial_num, diag, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(T, T), compute_q_blocks=False)


_FLEX = None  # flex_attention, compiled on first use


def compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # one compiled kernel per shape: a grid of T and sizes needs more than dynamo's default 8, and past the
        # limit it would silently run the eager flex_attention, which materialises T×T scores
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


class FlexBlockAttention(nn.Module):
    """Block selector (one choice per block of queries, by its first query) -> BlockMask -> compiled flex."""

    def __init__(self, d_model: int, n_head: int, T: int, top_k: int, block_size: int, chunk: int,
                 compiled: bool = True):
        super().__init__()
        self.selector = BlockSelector(n_head, d_model, D_INDEX, block_size)
        self.n_blocks = min(n_blocks(T, block_size), -(-top_k // block_size))
        self.chunk, self.compiled = chunk, compiled

    def forward(self, x, q, k, v):
        from torch.nn.attention.flex_attention import flex_attention

        choice = self.selector.select_blocks(x, self.n_blocks, per_block=True, chunk=self.chunk)
        mask = flex_block_mask(choice, q.size(-2), self.selector.block_size)
        return (compiled_flex() if self.compiled else flex_attention)(q, k, v, block_mask=mask)


def sdpa(x, q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def naive(x, q, k, v):
    return causal_attention_probs(q, k) @ v  # (B, h, T, T) probabilities materialised


def build(variant: str, d_model: int, n_head: int, T: int, top_k: int, block_size: int = 16,
          chunk: int = CHUNK) -> Callable:
    """The variant as a callable (x, q, k, v) -> (B, h, T, hs), with fresh random weights."""
    if variant == "sdpa":
        return sdpa
    if variant == "naive":
        return naive
    if variant == "block+flex":
        return FlexBlockAttention(d_model, n_head, T, top_k, block_size, chunk)
    selector, _, approximator = variant.partition("+")
    return GatherAttention(selector, approximator, d_model, n_head, T, top_k, block_size, chunk)


# --------------------------------------------------------------------------------------------------------------
# one cell: one variant at one shape


def resolve_device(name: str) -> torch.device:
    name = {"gpu": "cuda"}.get(name, name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise UserError(f"device {name!r} is unknown: use one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but torch sees no CUDA GPU: use --device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps was asked for but is not available: use --device cpu (or auto)")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"CPU {line.split(':', 1)[1].strip()}"
        except OSError:
            pass
        return f"CPU {platform.processor() or platform.machine()}"
    return device.type


def keys_read(variant: str, T: int, top_k: int, block_size: int) -> int:
    """Keys each query's approximator reads: k, or for the block selector k rounded up to whole blocks (≤ T)."""
    if variant in ("sdpa", "naive"):
        return T
    if variant.startswith("block+"):
        return min(T, min(n_blocks(T, block_size), -(-top_k // block_size)) * block_size)
    return top_k


def chunk_rows(variant: str, T: int, n_head: int, head_dim: int, top_k: int, block_size: int, batch: int,
               elem: int, chunk: int) -> int:
    """Queries per chunk: ``chunk``, or fewer so that one chunk's working memory stays under CHUNK_BYTES."""
    if variant in ("sdpa", "naive"):
        return T
    slots = keys_read(variant, T, top_k, block_size)
    cols = n_blocks(T, block_size) if variant.startswith("block+") else T
    per_query = batch * n_head * (3 * cols * elem + 3 * slots * head_dim * elem + 2 * slots * 8)
    return max(1, min(chunk, T, CHUNK_BYTES // per_query))


def estimate_bytes(variant: str, T: int, d_model: int, n_head: int, top_k: int, block_size: int, batch: int,
                   elem: int, chunk: int) -> int:
    """A rough upper bound of the cell's memory: inputs + weights + the forward's working memory."""
    hs, io = d_model // n_head, batch * T * d_model * elem  # one (B, T, C) or (B, h, T, hs) tensor
    inputs = 4 * io + io  # x, q, k, v + the output
    if variant == "sdpa":
        return inputs + io
    if variant == "naive":
        return inputs + 3 * batch * n_head * T * T * elem + T * T  # scores, masked, probabilities + the mask
    slots, nb = keys_read(variant, T, top_k, block_size), n_blocks(T, block_size)
    prepared = batch * n_head * T * max(HIDDEN, 2 * D_INDEX) * elem  # what the selector keeps for every query
    if variant == "block+flex":  # + the (B, h, nb, nb) keep and order tables of the BlockMask, ~24 bytes each
        return inputs + prepared + batch * n_head * nb * nb * 24
    rows = chunk_rows(variant, T, n_head, hs, top_k, block_size, batch, elem, chunk)
    cols = nb if variant.startswith("block+") else T
    work = batch * n_head * rows * (3 * cols * elem + 3 * slots * hs * elem + 2 * slots * 8)
    weights = n_head * (slots * hs * HIDDEN + HIDDEN * T) * elem if "mlp" in variant else 0
    return inputs + prepared + work + weights


@contextlib.contextmanager
def quiet_stderr():
    """Drop what is written to file descriptor 2 meanwhile: the C++ profiler's start/stop lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn, args, device: torch.device) -> int | None:
    """Most bytes allocated at once during one call of fn(*args), above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn(*args)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    # "[memory]" events: +bytes at each allocation, -bytes at each free of a block allocated inside the window
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn, args, device: torch.device) -> float:
    """Seconds of one call, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


_COMPILED: set[tuple] = set()  # block+flex shapes compiled so far in this process


def check_cell(variant: str, T: int, d_model: int, n_head: int, top_k: int, block_size: int, batch: int,
               repeats: int, warmup: int) -> None:
    if variant not in VARIANTS:
        raise UserError(f"variant {variant!r} is unknown: use one of {', '.join(VARIANTS)}")
    for name, value in (("T", T), ("d_model", d_model), ("n_head", n_head), ("block_size", block_size),
                        ("batch", batch), ("repeats", repeats)):
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"{name}={value} must be a positive integer")
    if warmup < 0:
        raise UserError(f"warmup={warmup} must be 0 or more runs")
    if d_model % n_head:
        raise UserError(f"d_model={d_model} is not divisible by n_head={n_head}: pick sizes like 512/8")
    if not isinstance(top_k, int) or not 0 < top_k <= T:
        raise UserError(f"top_k={top_k} must be in 1..T={T}: keys kept per query cannot exceed the sequence "
                        "length (pass a smaller --top-k, or --top-k-frac)")


def measure(variant: str, T: int, d_model: int = 512, n_head: int = 8, top_k: int | None = None,
            block_size: int = 16, batch: int = 1, repeats: int = 5, warmup: int = 1, device: str = "auto",
            dtype: str = "fp32", chunk: int = CHUNK, max_gb: float = MAX_GB, max_seconds: float | None = MAX_SECONDS,
            memory: bool = True, seed: int = 0) -> dict:
    """Time one variant at one shape: a row with median_ms, peak_mb, ... (status 'ok' or 'skipped' + note).

    top_k None: T/8 (at least 1). The row's ``speedup`` is filled in by ``run`` (it needs SDPA's time).
    """
    top_k = max(1, T // 8) if top_k is None else top_k
    check_cell(variant, T, d_model, n_head, top_k, block_size, batch, repeats, warmup)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    dev, dt = resolve_device(device), DTYPES[dtype]
    elem = torch.finfo(dt).bits // 8
    hs = d_model // n_head
    est = estimate_bytes(variant, T, d_model, n_head, top_k, block_size, batch, elem, chunk)
    rows = chunk_rows(variant, T, n_head, hs, top_k, block_size, batch, elem, chunk)
    row = dict(d_model=d_model, n_head=n_head, head_dim=hs, T=T, variant=variant, top_k=top_k,
               keys_read=keys_read(variant, T, top_k, block_size), status="ok", median_ms=None, min_ms=None,
               speedup=None, peak_mb=None, est_gb=round(est / 1e9, 3), repeats=0, compile_s=None,
               chunk=rows, block_size=block_size, batch=batch, device=str(dev), dtype=dtype, note="")
    if est > max_gb * 1e9:
        return {**row, "status": "skipped", "note": f"estimated {est / 1e9:.1f} GB > --max-gb {max_gb:g}"}
    if variant == "block+flex" and dev.type not in ("cpu", "cuda"):
        return {**row, "status": "skipped", "note": f"FlexAttention runs on CPU and CUDA, not {dev.type}"}

    torch.manual_seed(seed)
    x = torch.randn(batch, T, d_model, device=dev, dtype=dt)
    q, k, v = (torch.randn(batch, n_head, T, hs, device=dev, dtype=dt) for _ in range(3))
    fn = build(variant, d_model, n_head, T, top_k, block_size, rows)
    if isinstance(fn, nn.Module):
        fn = fn.to(device=dev, dtype=dt).eval()
    args = (x, q, k, v)
    try:
        with torch.no_grad():
            key = (variant, batch, n_head, T, hs, block_size, str(dev), dtype)
            if variant == "block+flex" and key not in _COMPILED:
                row["compile_s"] = round(timed(fn, args, dev), 2)  # the first call compiles
                _COMPILED.add(key)
            start = time.perf_counter()
            for _ in range(warmup):
                timed(fn, args, dev)
            times = []
            while len(times) < repeats and (not times or max_seconds is None
                                            or time.perf_counter() - start < max_seconds):
                times.append(timed(fn, args, dev))
            if memory:
                peak = peak_bytes(fn, args, dev)
                row["peak_mb"] = None if peak is None else round(peak / 1e6, 3)
    except (torch.OutOfMemoryError, MemoryError) as e:
        return {**row, "status": "skipped", "note": f"out of memory: {str(e).splitlines()[0][:120]}"}
    except Exception as e:  # noqa: BLE001  the one failing cell is recorded, the grid goes on
        first = (str(e).splitlines() or [""])[0][:160]
        if "can't allocate memory" in str(e) or "out of memory" in str(e):
            return {**row, "status": "skipped", "note": f"out of memory: {first}"}
        if variant != "block+flex":  # flex's kernel may refuse a shape or a device; anything else is a bug
            raise
        return {**row, "status": "skipped", "note": f"flex_attention failed: {type(e).__name__}: {first}"}
    row.update(median_ms=round(statistics.median(times) * 1e3, 4), min_ms=round(min(times) * 1e3, 4),
               repeats=len(times))
    if len(times) < repeats:
        row["note"] = f"{len(times)} of {repeats} runs: --max-seconds {max_seconds:g} reached"
    return row


# --------------------------------------------------------------------------------------------------------------
# the grid


@dataclass
class Settings:
    seq_lens: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)
    sizes: tuple[tuple[int, int], ...] = ((256, 4), (512, 8), (1024, 16))  # (d_model, n_head): heads of 64
    top_k: int | None = None  # a fixed k for every T; None: top_k_frac · T
    top_k_frac: float = 0.125  # k = T/8, the prototype's memory table's and src/costs.py's default
    block_size: int = 16  # block selector: keys per block (conf/selector/block.yaml)
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # sdpa is measured in any case: the baseline
    batch: int = 1  # one sequence, as the cost model (src/costs.py) counts
    repeats: int = 5  # timed runs per cell; the median is reported (robust to a stray slow run)
    warmup: int = 1  # untimed runs first: allocator, caches, lazy initialisation
    device: str = "auto"  # cuda when there is one, else cpu
    dtype: str = "fp32"  # the framework trains in fp32 on the CPU
    chunk: int = CHUNK
    max_gb: float = MAX_GB
    max_seconds: float | None = MAX_SECONDS
    max_total_seconds: float | None = None  # the whole run: cells after it are skipped; None: no limit
    seed: int = 0  # random inputs and weights
    out: str | None = None  # None: outputs/bench/TIMESTAMP
    quick: bool = False  # QUICK's grid where --seq-lens / --repeats are not given

    def k_for(self, T: int) -> int:
        return self.top_k if self.top_k is not None else max(1, round(T * self.top_k_frac))

    def describe(self, device: str) -> str:
        inverse = 1 / self.top_k_frac
        k = (f"k={self.top_k}" if self.top_k is not None
             else f"k=T/{inverse:.0f}" if abs(inverse - round(inverse)) < 1e-9 else f"k={self.top_k_frac:g}·T")
        return (f"measured, {device}, {self.dtype}, batch {self.batch}, {k}, block {self.block_size}, "
                f"median of {self.repeats} after {self.warmup} warm-up, {torch.get_num_threads()} threads")


def check_settings(s: Settings) -> None:
    if not s.seq_lens or not s.sizes or not s.variants:
        raise UserError("--seq-lens, --sizes and --variants each need at least one value")
    for v in s.variants:
        if v not in VARIANTS:
            raise UserError(f"variant {v!r} is unknown: use some of {', '.join(VARIANTS)}")
    if s.top_k is None and not 0 < s.top_k_frac <= 1:
        raise UserError(f"--top-k-frac {s.top_k_frac:g} must be in (0, 1]")
    for name in ("max_gb", "max_seconds", "max_total_seconds"):
        if getattr(s, name) is not None and getattr(s, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if s.chunk <= 0:
        raise UserError(f"--chunk {s.chunk} must be a positive number of queries")
    if s.dtype not in DTYPES:
        raise UserError(f"--dtype {s.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    resolve_device(s.device)
    for d, h in s.sizes:
        for T in s.seq_lens:
            check_cell("sdpa", T, d, h, s.k_for(T), s.block_size, s.batch, s.repeats, s.warmup)


def size_name(d_model: int, n_head: int) -> str:
    return f"{d_model}d/{n_head}h"


def run(args: argparse.Namespace | Settings, log=print) -> list[dict]:
    """Measure the grid: every size × T × variant (SDPA first, always: the baseline). Returns the rows."""
    s = args if isinstance(args, Settings) else settings_from_args(args)
    check_settings(s)
    variants = ("sdpa", *[v for v in s.variants if v != "sdpa"])
    cells = [(d, h, T, v) for d, h in s.sizes for T in sorted(s.seq_lens) for v in variants]
    rows, last, start = [], {}, time.perf_counter()  # last: (T, seconds of one run) of each size's variant
    for i, (d, h, T, v) in enumerate(cells, 1):
        k, prefix = s.k_for(T), f"[{i:>{len(str(len(cells)))}}/{len(cells)}] {size_name(d, h)} T={T:<6} {v:<16}"
        common = dict(T=T, d_model=d, n_head=h, top_k=k, block_size=s.block_size, batch=s.batch)
        predicted = last[d, h, v][1] * (T / last[d, h, v][0]) ** 2 if (d, h, v) in last else 0.0  # time ∝ T²
        if s.max_total_seconds is not None and time.perf_counter() - start > s.max_total_seconds:
            row = skipped_row(v, s, common, f"--max-total-seconds {s.max_total_seconds:g} spent")
        elif s.max_seconds is not None and predicted > s.max_seconds:
            T0, t0 = last[d, h, v]
            row = skipped_row(v, s, common, f"one run predicted to take {predicted:.0f} s (∝ T² from {t0:.1f} s at "
                                            f"T={T0}) > --max-seconds {s.max_seconds:g}")
        else:
            row = measure(v, repeats=s.repeats, warmup=s.warmup, device=s.device, dtype=s.dtype, chunk=s.chunk,
                          max_gb=s.max_gb, max_seconds=s.max_seconds, seed=s.seed, **common)
        if row["status"] == "ok":
            last[d, h, v] = (T, row["min_ms"] / 1e3)
        base = next((r for r in rows if r["variant"] == "sdpa" and (r["d_model"], r["n_head"], r["T"]) == (d, h, T)),
                    row)
        if row["status"] == "ok" and base["status"] == "ok":
            row["speedup"] = round(base["median_ms"] / row["median_ms"], 4)
        rows.append(row)
        log(f"{prefix} {cell_text(row)}")
    return rows


def skipped_row(variant: str, s: Settings, common: dict, note: str) -> dict:
    T, top_k, d, h = common["T"], common["top_k"], common["d_model"], common["n_head"]
    return dict(d_model=d, n_head=h, head_dim=d // h, T=T, variant=variant, top_k=top_k,
                keys_read=keys_read(variant, T, top_k, s.block_size), status="skipped", median_ms=None, min_ms=None,
                speedup=None, peak_mb=None, est_gb=None, repeats=0, compile_s=None, chunk=None,
                block_size=s.block_size, batch=s.batch, device=str(resolve_device(s.device)), dtype=s.dtype, note=note)


def cell_text(row: dict) -> str:
    if row["status"] != "ok":
        return f"skipped: {row['note']}"
    parts = [f"{row['median_ms']:10.2f} ms"]
    if row["speedup"] is not None and row["variant"] != "sdpa":
        parts.append(f"{row['speedup']:.2f}× vs SDPA")
    if row["peak_mb"] is not None:
        parts.append(f"peak {megabytes(row['peak_mb'])} MB")
    parts.append(f"{row['repeats']} runs")
    if row["compile_s"] is not None:
        parts.append(f"compiled in {row['compile_s']:.1f} s (not timed)")
    if row["note"]:
        parts.append(row["note"])
    return ", ".join(parts)


def crossover(rows: list[dict], variant: str, d_model: int | None = None, n_head: int | None = None) -> int | None:
    """The smallest measured T from which ``variant`` is faster than SDPA and stays faster at every larger measured
    T; None if it is not faster at the largest one. Only the rows of one size (d_model, n_head) when given."""
    points = sorted((r["T"], r["speedup"]) for r in rows
                    if r["variant"] == variant and r["status"] == "ok" and r.get("speedup") is not None
                    and d_model in (None, r["d_model"]) and n_head in (None, r["n_head"]))
    found = None
    for T, up in reversed(points):
        if up <= 1:
            break
        found = T
    return found


def crossover_text(rows: list[dict], variant: str, d_model: int | None = None, n_head: int | None = None) -> str:
    T = crossover(rows, variant, d_model, n_head)
    if T is not None:
        return f"T={T}"
    measured = [r["T"] for r in rows if r["variant"] == variant and r.get("speedup") is not None
                and d_model in (None, r["d_model"]) and n_head in (None, r["n_head"])]
    return f"none up to T={max(measured)}" if measured else "not measured"


# --------------------------------------------------------------------------------------------------------------
# the report: table, csv, json, md, png


def machine_info(s: Settings) -> dict:
    dev = resolve_device(s.device)
    return dict(device=str(dev), device_name=device_name(dev), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform(), threads=torch.get_num_threads(),
                cpu_count=os.cpu_count())


def sizes_of(rows: list[dict]) -> list[tuple[int, int]]:
    return list(dict.fromkeys((r["d_model"], r["n_head"]) for r in rows))


def variants_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows))


def fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def megabytes(x: float | None) -> str:
    """One decimal; three where that would show 0.0."""
    return fmt(x, ".1f" if x is None or x >= 0.05 else ".3f")


def table(rows: list[dict]) -> str:
    """One markdown table per size, then the measured crossover of each variant."""
    out = []
    for d, h in sizes_of(rows):
        out += [f"**{size_name(d, h)}** (head size {d // h})", "",
                "| T | variant | k read | median ms | speed-up vs SDPA | peak MB | note |",
                "|---:|---|---:|---:|---:|---:|---|"]
        for r in rows:
            if (r["d_model"], r["n_head"]) == (d, h):
                up = "–" if r["speedup"] is None else f"{r['speedup']:.2f}×"
                up = "1.00× (baseline)" if r["variant"] == "sdpa" and r["speedup"] is not None else up
                note = ("skipped: " if r["status"] != "ok" else "") + r["note"]
                if r["compile_s"] is not None:
                    note += f" compiled in {r['compile_s']:.1f} s (not timed)"
                out.append(f"| {r['T']} | {r['variant']} | {r['keys_read']} | {fmt(r['median_ms'], '.2f')} | {up} | "
                           f"{megabytes(r['peak_mb'])} | {note.strip()} |")
        out += ["", "Measured crossover T (faster than SDPA from this T on, at every larger measured T):", ""]
        out += [f"- {v}: {crossover_text(rows, v, d, h)}" for v in variants_of(rows) if v != "sdpa"]
        out.append("")
    return "\n".join(out)


NOTES = (
    "Forward of one attention layer, all heads, from q, k, v and x (the QKV/output projections are the same for "
    "every variant and left out); torch.no_grad; selection included; random weights. Peak MB (10⁶ bytes): most "
    "memory allocated at once during one forward above what was live before it (inputs and weights excluded), "
    "from a separate untimed run (CUDA: max_memory_allocated; CPU: torch.profiler allocator events). "
    "block+flex: compiled FlexAttention, one block choice per block of queries; compile time excluded. "
    "k read: keys each query attends (block variants: k rounded up to whole blocks)."
)


def plot(path: Path, rows: list[dict], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7))
    colors = {v: f"C{i}" for i, v in enumerate(variants_of(rows))}
    styles = ["-", "--", ":", "-."]
    for j, (d, h) in enumerate(sizes_of(rows)):
        for v in variants_of(rows):
            rs = [r for r in rows if (r["d_model"], r["n_head"], r["variant"]) == (d, h, v) and r["status"] == "ok"]
            name = f"{v}, {size_name(d, h)}"
            ups = [r for r in rs if r["speedup"] is not None]
            if ups and v != "sdpa":
                left.plot([r["T"] for r in ups], [r["speedup"] for r in ups], styles[j % 4], marker="o",
                          color=colors[v], label=f"{name} (crossover {crossover_text(rows, v, d, h)})")
            mem = [r for r in rs if r["peak_mb"]]
            if mem:
                right.plot([r["T"] for r in mem], [r["peak_mb"] for r in mem], styles[j % 4], marker="o",
                           color=colors[v], label=name)
    ts = sorted({r["T"] for r in rows})
    left.axhline(1.0, color="k", lw=1)
    left.text(ts[-1], 1.0, "1× = SDPA ", ha="right", va="bottom", fontsize=8)
    left.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="speed-up over SDPA (median time ratio)",
             title="Speed-up over SDPA vs T (above 1: faster)")
    right.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="peak memory of one forward (MB)",
              title="Peak memory vs T (above the inputs)")
    for ax in (left, right):
        ax.set_xticks(ts, [str(t) for t in ts], rotation=30)
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle(label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[dict], s: Settings, out: Path, elapsed: float | None = None) -> list[Path]:
    """bench.csv, bench.json, bench.md, bench.png in ``out``."""
    info = machine_info(s)
    label = s.describe(info["device_name"])
    settings = {k: v for k, v in asdict(s).items() if k != "out"}
    settings.update(chunk_bytes=CHUNK_BYTES, hidden=HIDDEN, d_index=D_INDEX)
    cross = {size_name(d, h): {v: crossover(rows, v, d, h) for v in variants_of(rows) if v != "sdpa"}
             for d, h in sizes_of(rows)}
    paths = [out / f"bench.{ext}" for ext in ("csv", "json", "md", "png")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with paths[0].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        paths[1].write_text(json.dumps({"machine": info, "settings": settings, "label": label, "elapsed_s": elapsed,
                                        "rows": rows, "crossover": cross, "notes": NOTES}, indent=2) + "\n")
        paths[2].write_text(f"# Measured: one attention layer, dense vs sparse\n\n{label}; torch {info['torch']}."
                            f"\n\n{NOTES}\n\n{table(rows)}")
        plot(paths[3], rows, label)
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}; pass another folder with --out") from None
    return paths


# --------------------------------------------------------------------------------------------------------------
# the command line


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UserError (one line, exit 2) instead of printing the usage."""

    def error(self, message: str):
        raise UserError(f"{message} (see python -m src.bench --help)")


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def size_list(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sizes = tuple(tuple(int(p) for p in t.split("/")) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(len(s) != 2 or min(s) <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected D_MODEL/N_HEAD[,...] such as 512/8,1024/16, got {text!r}")
    return sizes


def name_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> Parser:
    d = Settings()
    p = Parser(prog="python -m src.bench", description=__doc__.splitlines()[0],
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seq-lens", type=int_list, default=None,
                   help=f"sequence lengths T (default {','.join(map(str, d.seq_lens))}; --quick: "
                        f"{','.join(map(str, QUICK['seq_lens']))})")
    p.add_argument("--sizes", type=size_list, default=None,
                   help="D_MODEL/N_HEAD,... e.g. 512/8,1024/16 (default 256/4,512/8,1024/16; --quick: 512/8)")
    p.add_argument("--d-model", type=int, default=None, help="one size's width (with --n-head; default 512)")
    p.add_argument("--n-head", type=int, default=None, help="one size's heads (default 8: heads of 64)")
    k = p.add_mutually_exclusive_group()
    k.add_argument("--top-k", type=int, default=None, help="keys kept per query, the same at every T (default T/8)")
    k.add_argument("--top-k-frac", type=float, default=d.top_k_frac, help="keys kept per query as a fraction of T")
    p.add_argument("--block-size", type=int, default=d.block_size, help="block selector: keys per block")
    p.add_argument("--variants", type=name_list, default=d.variants,
                   help=f"comma-separated, from: {', '.join(VARIANTS)} (sdpa is always measured: the baseline)")
    p.add_argument("--batch", type=int, default=d.batch, help="sequences per forward")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per cell, median reported (default 5; "
                                                                f"--quick: {QUICK['repeats']})")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs before the timed ones")
    p.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)}")
    p.add_argument("--dtype", default=d.dtype, help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--chunk", type=int, default=d.chunk,
                   help=f"queries processed at a time by the sparse variants (fewer when one chunk would take "
                        f"over {CHUNK_BYTES // 10**6} MB)")
    p.add_argument("--max-gb", type=float, default=d.max_gb, help="skip cells whose estimated memory exceeds this")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="per cell: stop repeating after this long; skip a cell one run of which is predicted "
                        "(time ∝ T², from the variant's previous T) to take longer")
    p.add_argument("--max-total-seconds", type=float, default=None, help="the whole run: skip the cells after it")
    p.add_argument("--seed", type=int, default=d.seed, help="random inputs and weights")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/TIMESTAMP)")
    p.add_argument("--quick", action="store_true",
                   help="a small grid (T 256 and 1024, 3 repeats) that takes under a minute on 2 CPU cores")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    quick = getattr(args, "quick", False)
    if args.sizes is not None and (args.d_model is not None or args.n_head is not None):
        raise UserError("give either --sizes or --d-model/--n-head, not both")
    if args.sizes is not None:
        sizes = args.sizes
    elif args.d_model is not None or args.n_head is not None or quick:
        sizes = ((args.d_model or 512, args.n_head or 8),)
    else:
        sizes = Settings.sizes
    seq_lens = args.seq_lens or (QUICK["seq_lens"] if quick else Settings.seq_lens)
    repeats = args.repeats if args.repeats is not None else (QUICK["repeats"] if quick else Settings.repeats)
    return Settings(seq_lens=tuple(seq_lens), sizes=tuple(sizes), top_k=args.top_k, top_k_frac=args.top_k_frac,
                    block_size=args.block_size, variants=tuple(args.variants), batch=args.batch, repeats=repeats,
                    warmup=args.warmup, device=args.device, dtype=args.dtype, chunk=args.chunk, max_gb=args.max_gb,
                    max_seconds=args.max_seconds, max_total_seconds=args.max_total_seconds, seed=args.seed,
                    out=str(args.out) if args.out else None, quick=quick)


def main(argv: list[str] | None = None) -> int:
    try:
        s = settings_from_args(build_parser().parse_args(argv))
        check_settings(s)
        out = Path(s.out) if s.out else Path("outputs/bench") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        info = machine_info(s)
        print(f"{s.describe(info['device_name'])}; torch {info['torch']}; writing to {out}/", flush=True)
        start = time.perf_counter()
        rows = run(s, log=lambda line: print(line, flush=True))
        elapsed = time.perf_counter() - start
        paths = write(rows, s, out, elapsed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + table(rows))
    print(f"took {elapsed:.0f} s; wrote " + " ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
