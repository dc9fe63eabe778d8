"""Measured speed and memory of ONE attention layer, dense against sparse: ``python -m src.bench``.

The benchmark only measures: every variant is the library's own code (src/sparse/, src/selectors/,
src/approximators/), built with random weights (speed does not depend on training), exactly as the hybrid model
runs it. What is timed: the forward pass of one attention layer, all heads, from q, k, v (B, nh, T, hs) and the
layer input x (B, T, C) to the heads' outputs (B, nh, T, hs); the Q/K/V and output projections are the same for
every variant and left out. Under torch.no_grad, after ``--warmup`` runs, by torch.utils.benchmark
(src/bench/timing.py ``time_runs``): the median of blocked autorange's blocks for a call under 50 ms, else of
``--repeats`` single calls. ``--backward`` times a training step's attention instead: the forward and the gradients
of q, k and v (the selection is a discrete choice: no gradient flows through it), against SDPA's forward and
backward.

* ``sdpa``  F.scaled_dot_product_attention(is_causal=True): the baseline of every speed-up;
* ``naive`` the materialised causal softmax(QKᵀ/√hs)V;
* ``SELECTOR+APPROXIMATOR`` (e.g. ``indexer+softmax``, ``mlp+mlp``, ``block+softmax``) the gather path:
  selection included, the selected keys and values gathered, the approximator's output;
* ``block+flex`` the block selector's choice as a FlexAttention BlockMask, compiled kernel (compile time reported
  apart, never timed); ``block+tiles`` the same choice as tiles of keys under SDPA's fused kernel;
* ``query_block+query_tiles`` / ``query_block+query_flex`` the per-query block selector (MoBA's gate) on the
  per-query kernels: key block by key block, the queries that chose it in tiles (only the chosen pairs' work) /
  FlexAttention over the union of a query block's choices, whose size depends on how far its queries agree (random
  weights: they choose independently, the union's worst case).

Every sparse cell runs under a key budget (``--budgets``): a fixed number of keys per query (``512``) or a fraction
of T (``0.125``); the default grid has both. Each row reports the FLOP limit -- dense causal FLOPs over the sparse
variant's FLOPs, selection included (src/costs/accounting.py) -- and the fraction of it the measured speed-up reaches,
and splits the sparse time into selection, mask building and kernel (the median of up to 3 extra, untimed runs with
src/bench/timing.py's Phases).

A cell is skipped, and recorded with the reason, when its estimated memory exceeds ``--max-gb``, when one run of it
is predicted (time ∝ T², from the variant's previous T) to take longer than ``--max-seconds`` (which also stops a
cell's repeats), when ``--max-total-seconds`` is spent, or when a fixed budget exceeds T.

Peak memory (MB = 10⁶ bytes) is the most memory allocated at once during one forward, above what was live before
it (inputs and weights excluded; intermediates and the output counted), from a separate, untimed run: on an
accelerator torch.accelerator's max_memory_allocated; on CPU the profiler's allocator events (torch.profiler,
profile_memory=True), which see every tensor allocation of PyTorch's CPU allocator, compiled kernels' buffers
included.

``--decode`` measures generation instead -- one decode step against a KV cache of L keys, and whole-model tokens
per second (src/bench/decode.py). Writes bench.csv, bench.json (machine and settings), bench.md and bench.png to
``--out``. Bad arguments end with
one line ``error: ...`` and exit status 2. Functions for other code: ``time_runs``, ``measure``, ``run``,
``crossover``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from src.approximators import APPROXIMATORS, build_approximator
from src.bench.harness import DTYPES, command_line, name_list
from src.bench.timing import MAX_SECONDS, Phases, machine_info, peak_bytes, time_runs, timed
from src.config import DEVICES, SelectorConf, resolve_device
from src.costs import accounting
from src.errors import Parser, UserError, int_list
from src.report.tables import markdown_table, megabytes, num, write_report
from src.selectors import BLOCK_SELECTORS, SELECTORS, build_selector
from src.sparse import QUERY_KERNELS, Budget, SparseAttention, n_blocks, naive_attention, sdpa_attention
from src.sparse.attention import FLEX_KERNELS
from src.sparse.flex import is_new_shape
from src.selectors.query_block import CHOOSE_ROWS
from src.sparse.gather import chunk_rows
from src.sparse.query_tiles import CHUNK_PAIRS
from src.sparse.tiles import TILE_BYTES

KERNEL_VARIANTS = {  # SELECTOR+KERNEL: a block selector with exact softmax on a block-sparse kernel
    "block+flex": ("block", "flex"), "block+tiles": ("block", "tiles"),
    "query_block+query_flex": ("query_block", "query_flex"), "query_block+query_tiles": ("query_block", "query_tiles"),
}
DEFAULT_VARIANTS = ("sdpa", "naive", "mlp+mlp", "indexer+softmax", "block+softmax", "block+flex", "block+tiles")
VARIANTS = ("sdpa", "naive", *(f"{s}+{a}" for s, cls in SELECTORS.items() if cls.causal for a in APPROXIMATORS),
            *KERNEL_VARIANTS)  # the causal selectors: the block oracle is a bound, not a model to time
DENSE = ("sdpa", "naive")  # no budget: measured once per size and T

MAX_GB = 8.0  # skip a cell whose estimated memory (inputs, weights, working memory) exceeds this
QUICK = dict(seq_lens=(256, 1024), repeats=3)  # --quick (512d / 8 heads only): under a minute on 2 CPU cores
PHASES = ("selection", "mask", "kernel")


# --------------------------------------------------------------------------------------------------------------
# the variants: library code only


def pair_of(variant: str) -> tuple[str, str, str]:
    """variant -> (selector, approximator, kernel) of the library."""
    if variant in KERNEL_VARIANTS:
        selector, kernel = KERNEL_VARIANTS[variant]
        return selector, "softmax", kernel
    selector, _, approximator = variant.partition("+")
    return selector, approximator, "gather"


def build(variant: str, d_model: int, n_head: int, T: int, budget: Budget,
          block_size: int = SelectorConf.block_size) -> Callable:
    """The variant as a callable (x, q, k, v, phases=None) -> (B, h, T, hs), with fresh random weights."""
    if variant == "sdpa":
        return lambda x, q, k, v, phases=None: sdpa_attention(q, k, v)
    if variant == "naive":
        return lambda x, q, k, v, phases=None: naive_attention(q, k, v)
    selector_name, approximator_name, kernel = pair_of(variant)
    hs = d_model // n_head
    selector = build_selector(selector_name, n_head, d_model, hs, T, block_size=block_size)  # the other sizes:
    slots = keys_read(variant, T, budget, block_size)  # src/config.py's defaults
    approximator = build_approximator(approximator_name, n_head, hs, slots)
    return SparseAttention(selector, approximator, budget, kernel)


def keys_read(variant: str, T: int, budget: Budget, block_size: int) -> int:
    """Keys each query's approximator may read (src/sparse/budget.py ``Budget.keys_read``); all T for SDPA."""
    if variant in DENSE:
        return T
    return budget.keys_read(T, block_size if pair_of(variant)[0] in BLOCK_SELECTORS else None)


def flop_limit(variant: str, T: int, d_model: int, n_head: int, budget: Budget, block_size: int,
               backward: bool = False) -> float:
    """Dense causal attention FLOPs / the variant's FLOPs, selection included (src/costs/accounting.py): the speed-up a
    kernel running at SDPA's rate would reach; with ``backward``, of forward + backward (the selection once)."""
    if variant in DENSE:
        return 1.0
    selector, approximator, _ = pair_of(variant)
    sizes = accounting.ComponentSizes(block=block_size)
    sparse = accounting.sparse_layer(f"{selector}+{approximator}", d_model, n_head, T, budget, sizes, backward)
    return accounting.dense_layer(d_model, n_head, T, sizes, backward).flops / sparse.flops


# --------------------------------------------------------------------------------------------------------------
# one cell: one variant at one shape


def estimate_bytes(variant: str, T: int, d_model: int, n_head: int, budget: Budget, block_size: int, batch: int,
                   elem: int) -> int:
    """A rough upper bound of the cell's memory: inputs + weights + the forward's working memory."""
    hs, io = d_model // n_head, batch * T * d_model * elem  # one (B, T, C) or (B, h, T, hs) tensor
    inputs = 4 * io + io  # x, q, k, v + the output
    if variant == "sdpa":
        return inputs + io
    if variant == "naive":
        return inputs + 3 * batch * n_head * T * T * elem + T * T  # scores, masked, probabilities + the mask
    selector, approximator, kernel = pair_of(variant)
    slots, nb = keys_read(variant, T, budget, block_size), n_blocks(T, block_size)
    prepared = batch * n_head * T * max(SelectorConf.hidden, 2 * SelectorConf.d_index) * elem  # per query
    if kernel in QUERY_KERNELS:  # every query's choice and a chunk of its scores; query_flex: the per-query table
        #                           and the block tables; query_tiles: the own blocks' output and one chunk of pairs
        choice = batch * n_head * (T * (slots // block_size) * 9 + min(T, CHOOSE_ROWS) * nb * 12)
        if kernel == "query_flex":
            return inputs + prepared + choice + batch * n_head * nb * (block_size * nb + 16 * nb)
        return inputs + prepared + choice + 2 * io + CHUNK_PAIRS * (4 * hs * elem + 48)
    if kernel != "gather":  # the choice and its tables (B, h, nb, nb) + one chunk of tiles
        return inputs + prepared + batch * n_head * nb * nb * 24 + 2 * TILE_BYTES
    cols = 0 if SELECTORS[selector].picks_blocks else T
    rows = chunk_rows(batch, n_head, T, hs, slots, cols, elem)
    work = batch * n_head * rows * (3 * cols * elem + 3 * slots * hs * elem + 2 * slots * 8)
    weights = n_head * (slots * hs * SelectorConf.hidden + SelectorConf.hidden * T) * elem if "mlp" in variant else 0
    return inputs + prepared + work + weights


def with_backward(fn: Callable) -> Callable:
    """fn(x, q, k, v) -> one call of fn and the gradients of q, k and v for an output gradient of ones: what a training
    step spends in the attention (the projections are the same for every variant and left out)."""
    def step(x, q, k, v, phases=None):
        out = fn(x, q, k, v)
        return torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return step


def check_cell(variant: str, T: int, d_model: int, n_head: int, block_size: int, batch: int, repeats: int,
               warmup: int) -> None:
    if variant not in VARIANTS:
        raise UserError(f"variant {variant!r} is unknown: use one of {', '.join(VARIANTS)}")
    for name, value in (("T", T), ("d_model", d_model), ("n_head", n_head), ("block_size", block_size),
                        ("batch", batch), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"{name}={value} must be a positive integer")
    if warmup < 0:
        raise UserError(f"warmup={warmup} must be 0 or more runs")
    if d_model % n_head:
        raise UserError(f"d_model={d_model} is not divisible by n_head={n_head}: pick sizes like 512/8")


def parse_budget(value) -> Budget:
    try:
        return value if isinstance(value, Budget) else Budget.parse(value, "budget")
    except ValueError as e:
        raise UserError(str(e)) from None


def new_row(variant: str, T: int, d_model: int, n_head: int, budget: Budget, block_size: int, batch: int,
            device: torch.device, dtype: str, est_gb: float | None = None, backward: bool = False) -> dict:
    """One cell's row before it is measured (status 'ok'; ``measure`` fills in the times, ``run`` the speed-up)."""
    return dict(d_model=d_model, n_head=n_head, head_dim=d_model // n_head, T=T, variant=variant,
                budget="–" if variant in DENSE else str(budget), keys_read=keys_read(variant, T, budget, block_size),
                status="ok", median_ms=None, min_ms=None, speedup=None,
                flop_limit=round(flop_limit(variant, T, d_model, n_head, budget, block_size, backward), 3),
                of_limit=None, passes="forward + backward" if backward else "forward",
                selection_ms=None, mask_ms=None, kernel_ms=None, peak_mb=None, est_gb=est_gb, repeats=0,
                compile_s=None, block_size=block_size, batch=batch, device=str(device), dtype=dtype, note="")


def measure(variant: str, T: int, d_model: int = 512, n_head: int = 8, budget: Budget | int | float = 0.125,
            block_size: int = SelectorConf.block_size, batch: int = 1, repeats: int = 5, warmup: int = 1,
            device: str = "auto", dtype: str = "fp32", max_gb: float = MAX_GB,
            max_seconds: float | None = MAX_SECONDS, memory: bool = True, seed: int = 0, phases: bool = True,
            backward: bool = False) -> dict:
    """Time one variant at one shape: a row with median_ms, peak_mb, ... (status 'ok' or 'skipped' + note);
    ``memory`` / ``phases``: also its peak memory / its time split into phases (from extra, untimed runs);
    ``backward``: the forward and the backward to q, k and v (a training step's attention; no phases).

    The row's ``speedup`` and ``of_limit`` are filled in by ``run`` (they need SDPA's time).
    """
    budget = parse_budget(budget)
    check_cell(variant, T, d_model, n_head, block_size, batch, repeats, warmup)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    dev, dt = resolve_device(device, "--device"), DTYPES[dtype]
    elem = torch.finfo(dt).bits // 8
    hs = d_model // n_head
    est = estimate_bytes(variant, T, d_model, n_head, budget, block_size, batch, elem)
    est *= 3 if backward else 1  # the saved activations and the gradients
    row = new_row(variant, T, d_model, n_head, budget, block_size, batch, dev, dtype, est_gb=round(est / 1e9, 3),
                  backward=backward)
    if variant not in DENSE and budget.fixed and budget.value > T:
        return {**row, "status": "skipped", "note": f"budget {budget} > T"}
    if est > max_gb * 1e9:
        return {**row, "status": "skipped", "note": f"estimated {est / 1e9:.1f} GB > --max-gb {max_gb:g}"}
    flex = pair_of(variant)[2] in FLEX_KERNELS
    if flex and dev.type not in ("cpu", "cuda"):
        return {**row, "status": "skipped", "note": f"FlexAttention runs on CPU and CUDA, not {dev.type}"}
    if flex and backward and dev.type == "cpu":
        return {**row, "status": "skipped", "note": "FlexAttention has no backward on the CPU"}

    torch.manual_seed(seed)
    x = torch.randn(batch, T, d_model, device=dev, dtype=dt)
    q, k, v = (torch.randn(batch, n_head, T, hs, device=dev, dtype=dt) for _ in range(3))
    fn = build(variant, d_model, n_head, T, budget, block_size)
    if isinstance(fn, nn.Module):
        fn = fn.to(device=dev, dtype=dt).eval().requires_grad_(False)  # a choice has no gradient
    args = (x, q, k, v)
    if backward:
        fn, args, phases = with_backward(fn), (x, *(t.requires_grad_() for t in (q, k, v))), False
    try:
        with contextlib.nullcontext() if backward else torch.no_grad():
            if flex and is_new_shape(q, block_size, per_query=pair_of(variant)[2] in QUERY_KERNELS):
                row["compile_s"] = round(timed(fn, args, dev), 2)  # the first call compiles
            times = time_runs(fn, args, dev, repeats, warmup, max_seconds)
            if phases and variant not in DENSE:  # the phases of (up to) 3 more runs, median of each
                runs = []
                for _ in range(min(3, len(times))):
                    runs.append(Phases(dev))
                    fn(*args, runs[-1])
                row.update({f"{p}_ms": round(statistics.median(r.seconds.get(p, 0.0) for r in runs) * 1e3, 3)
                            for p in PHASES})
            if memory:
                peak = peak_bytes(fn, args, dev)
                row["peak_mb"] = None if peak is None else round(peak / 1e6, 3)
    except (torch.OutOfMemoryError, MemoryError) as e:
        return {**row, "status": "skipped", "note": f"out of memory: {str(e).splitlines()[0][:120]}"}
    except Exception as e:  # noqa: BLE001  the one failing cell is recorded, the grid goes on
        first = (str(e).splitlines() or [""])[0][:160]
        if "can't allocate memory" in str(e) or "out of memory" in str(e):
            return {**row, "status": "skipped", "note": f"out of memory: {first}"}
        if not flex:  # flex's kernel may refuse a shape or a device; anything else is a bug
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
    sizes: tuple[tuple[int, int], ...] = ((512, 8),)  # (d_model, n_head); 16 min on 2 cores with both budgets
    budgets: tuple = (512, 0.125)  # keys per query: fixed (NSA / MoBA style) and T/8 (the prototype's)
    block_size: int = SelectorConf.block_size  # block variants: keys per block
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # sdpa is measured in any case: the baseline
    batch: int = 1  # one sequence, as the cost model (src/costs/accounting.py) counts
    repeats: int = 5  # timed runs per cell; the median is reported (robust to a stray slow run)
    warmup: int = 1  # untimed runs first: allocator, caches, lazy initialisation
    device: str = "auto"  # cuda when there is one, else cpu
    dtype: str = "fp32"  # the framework trains in fp32 on the CPU
    max_gb: float = MAX_GB
    max_seconds: float | None = MAX_SECONDS
    max_total_seconds: float | None = None  # the whole run: cells after it are skipped; None: no limit
    seed: int = 0  # random inputs and weights
    out: str | None = None  # None: outputs/bench/TIMESTAMP
    quick: bool = False  # QUICK's grid where --seq-lens / --repeats are not given
    memory: bool = True  # each cell's peak memory (an extra, untimed run)
    phases: bool = True  # each sparse cell's time split into selection / mask / kernel (up to 3 extra runs)
    backward: bool = False  # time forward + backward to q, k, v (training) instead of the forward alone

    @property
    def passes(self) -> str:
        return "forward + backward" if self.backward else "forward"

    def describe(self, device: str) -> str:
        budgets = ", ".join(str(parse_budget(b)) for b in self.budgets)
        return (f"measured, {device}, {self.passes}, {self.dtype}, batch {self.batch}, budgets {budgets} per query, "
                f"block {self.block_size}, torch.utils.benchmark (blocks under 50 ms, else {self.repeats} calls) after "
                f"{self.warmup} warm-up, "
                f"{torch.get_num_threads()} threads")


def check_settings(s: Settings) -> None:
    if not s.seq_lens or not s.sizes or not s.variants or not s.budgets:
        raise UserError("--seq-lens, --sizes, --budgets and --variants each need at least one value")
    for v in s.variants:
        if v not in VARIANTS:
            raise UserError(f"variant {v!r} is unknown: use some of {', '.join(VARIANTS)}")
    for b in s.budgets:
        parse_budget(b)
    for name in ("max_gb", "max_seconds", "max_total_seconds"):
        if getattr(s, name) is not None and getattr(s, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if s.dtype not in DTYPES:
        raise UserError(f"--dtype {s.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    resolve_device(s.device, "--device")
    for d, h in s.sizes:
        for T in s.seq_lens:
            check_cell("sdpa", T, d, h, s.block_size, s.batch, s.repeats, s.warmup)


def size_name(d_model: int, n_head: int) -> str:
    return f"{d_model}d/{n_head}h"


def run(args: argparse.Namespace | Settings, log=print) -> list[dict]:
    """Measure the grid: every size × T × (dense variants, then budget × sparse variant); SDPA first, always: the
    baseline. Returns the rows."""
    s = args if isinstance(args, Settings) else settings_from_args(args)
    check_settings(s)
    budgets = [parse_budget(b) for b in s.budgets]
    dense = ("sdpa", *[v for v in s.variants if v == "naive"])
    sparse = [v for v in s.variants if v not in DENSE]
    cells = [(d, h, T, v, b) for d, h in s.sizes for T in sorted(s.seq_lens)
             for v, b in [(v, None) for v in dense] + [(v, b) for b in budgets for v in sparse]]
    rows, last, start = [], {}, time.perf_counter()  # last: (T, seconds of one run) of each (size, variant, budget)
    width = len(str(len(cells)))
    for i, (d, h, T, v, b) in enumerate(cells, 1):
        label = v if b is None else f"{v} @ {b}"
        prefix = f"[{i:>{width}}/{len(cells)}] {size_name(d, h)} T={T:<6} {label:<28}"
        common = dict(T=T, d_model=d, n_head=h, budget=b or budgets[0], block_size=s.block_size, batch=s.batch)
        key = (d, h, v, str(b))
        predicted = last[key][1] * (T / last[key][0]) ** 2 if key in last else 0.0  # time ∝ T²
        if s.max_total_seconds is not None and time.perf_counter() - start > s.max_total_seconds:
            row = skipped_row(v, s, common, f"--max-total-seconds {s.max_total_seconds:g} spent")
        elif s.max_seconds is not None and predicted > s.max_seconds:
            T0, t0 = last[key]
            row = skipped_row(v, s, common, f"one run predicted to take {predicted:.0f} s (∝ T² from {t0:.1f} s at "
                                            f"T={T0}) > --max-seconds {s.max_seconds:g}")
        else:
            row = measure(v, repeats=s.repeats, warmup=s.warmup, device=s.device, dtype=s.dtype, max_gb=s.max_gb,
                          max_seconds=s.max_seconds, seed=s.seed, memory=s.memory, phases=s.phases,
                          backward=s.backward, **common)
        if row["status"] == "ok":
            last[key] = (T, row["min_ms"] / 1e3)
        base = next((r for r in rows if r["variant"] == "sdpa" and (r["d_model"], r["n_head"], r["T"]) == (d, h, T)),
                    row)
        if row["status"] == "ok" and base["status"] == "ok":
            row["speedup"] = round(base["median_ms"] / row["median_ms"], 4)
            row["of_limit"] = round(row["speedup"] / row["flop_limit"], 4)
        rows.append(row)
        log(f"{prefix} {cell_text(row)}")
    return rows


def skipped_row(variant: str, s: Settings, common: dict, note: str) -> dict:
    return {**new_row(variant, common["T"], common["d_model"], common["n_head"], common["budget"], s.block_size,
                      s.batch, resolve_device(s.device, "--device"), s.dtype, backward=s.backward), "status": "skipped",
            "note": note}


def cell_text(row: dict) -> str:
    if row["status"] != "ok":
        return f"skipped: {row['note']}"
    parts = [f"{row['median_ms']:10.2f} ms"]
    if row["speedup"] is not None and row["variant"] != "sdpa":
        parts.append(f"{row['speedup']:.2f}× vs SDPA")
        if row["variant"] not in DENSE:
            parts.append(f"FLOP limit {row['flop_limit']:.2f}× ({row['of_limit']:.0%} of it)")
    if row["kernel_ms"] is not None:
        parts.append(f"select/mask/kernel {row['selection_ms']:.1f}/{row['mask_ms']:.1f}/{row['kernel_ms']:.1f} ms")
    if row["peak_mb"] is not None:
        parts.append(f"peak {megabytes(row['peak_mb'] * 1e6)} MB")
    parts.append(f"{row['repeats']} runs")
    if row["compile_s"] is not None:
        parts.append(f"compiled in {row['compile_s']:.1f} s (not timed)")
    if row["note"]:
        parts.append(row["note"])
    return ", ".join(parts)


def series(rows: list[dict]) -> list[tuple[str, str]]:
    """(variant, budget) of every measured line, in order."""
    return list(dict.fromkeys((r["variant"], r["budget"]) for r in rows))


def crossover(rows: list[dict], variant: str, d_model: int | None = None, n_head: int | None = None,
              budget: str | None = None) -> int | None:
    """The smallest measured T from which ``variant`` is faster than SDPA and stays faster at every larger measured
    T; None if it is not faster at the largest one. Only the rows of one size (d_model, n_head) and one budget
    (its text, e.g. '512 keys') when given."""
    points = sorted((r["T"], r["speedup"]) for r in rows
                    if r["variant"] == variant and r["status"] == "ok" and r.get("speedup") is not None
                    and d_model in (None, r["d_model"]) and n_head in (None, r["n_head"])
                    and budget in (None, r.get("budget")))
    found = None
    for T, up in reversed(points):
        if up <= 1:
            break
        found = T
    return found


def crossover_text(rows: list[dict], variant: str, d_model: int | None = None, n_head: int | None = None,
                   budget: str | None = None) -> str:
    T = crossover(rows, variant, d_model, n_head, budget)
    if T is not None:
        return f"T={T}"
    measured = [r["T"] for r in rows if r["variant"] == variant and r.get("speedup") is not None
                and d_model in (None, r["d_model"]) and n_head in (None, r["n_head"])
                and budget in (None, r.get("budget"))]
    return f"none up to T={max(measured)}" if measured else "not measured"


# --------------------------------------------------------------------------------------------------------------
# the report: table, csv, json, md, png


def sizes_of(rows: list[dict]) -> list[tuple[int, int]]:
    return list(dict.fromkeys((r["d_model"], r["n_head"]) for r in rows))


def table(rows: list[dict]) -> str:
    """One markdown table per size, then the measured crossover of each variant and budget."""
    out = []
    for d, h in sizes_of(rows):
        cells = []
        for r in rows:
            if (r["d_model"], r["n_head"]) == (d, h):
                up = "–" if r["speedup"] is None else f"{r['speedup']:.2f}×"
                up = "1.00× (baseline)" if r["variant"] == "sdpa" and r["speedup"] is not None else up
                note = ("skipped: " if r["status"] != "ok" else "") + r["note"]
                if r["compile_s"] is not None:
                    note += f" compiled in {r['compile_s']:.1f} s (not timed)"
                split = ("–" if r["kernel_ms"] is None
                         else f"{r['selection_ms']:.1f} / {r['mask_ms']:.1f} / {r['kernel_ms']:.1f}")
                limit = "–" if r["variant"] in DENSE else f"{r['flop_limit']:.2f}×"
                cells.append([r["T"], r["variant"], r["budget"], r["keys_read"], num(r["median_ms"], ".2f"), up, limit,
                              num(r["of_limit"], ".0%"), split,
                              megabytes(None if r["peak_mb"] is None else r["peak_mb"] * 1e6), note.strip()])
        out += [f"**{size_name(d, h)}** (head size {d // h})", "", markdown_table(
            ["T", "variant", "budget", "keys read", "median ms", "speed-up vs SDPA", "FLOP limit", "of limit",
             "select / mask / kernel ms", "peak MB", "note"], cells, "rllrrrrrlrl")]
        out += ["", "Measured crossover T (faster than SDPA from this T on, at every larger measured T):", ""]
        out += [f"- {v}" + ("" if b == "–" else f", budget {b}") + f": {crossover_text(rows, v, d, h, b)}"
                for v, b in series(rows) if v != "sdpa"]
        out.append("")
    return "\n".join(out)


NOTES = (
    "Forward of one attention layer, all heads, from q, k, v and x (the QKV/output projections are the same for "
    "every variant and left out); torch.no_grad; selection included; random weights. With --backward: the forward "
    "and the gradients of q, k and v (torch.autograd.grad, an output gradient of ones), as a training step spends in "
    "the attention; the choice is discrete (no gradient through the selection), FLOP limits count the attention's "
    "backward as twice its forward and the selection once. Budget: keys per query "
    "(block variants: rounded up to whole blocks, the own block included). FLOP limit: dense causal FLOPs / the "
    "variant's FLOPs, selection included (src/costs/accounting.py); 'of limit': the measured speed-up over that limit. "
    "select / mask / kernel: the median of up to 3 extra untimed runs, split into phases. "
    "Peak MB (10⁶ bytes): most memory allocated at "
    "once during one forward above what was live before it (inputs and weights excluded), from a separate untimed "
    "run (CUDA: max_memory_allocated; CPU: torch.profiler allocator events). block+flex: compiled FlexAttention "
    "(compile time excluded); block+tiles: the chosen blocks as tiles under SDPA's fused kernel; query_block+"
    "query_tiles: every query's own chosen blocks, key block by key block (the queries that chose it in tiles, the "
    "parts merged by logsumexp); query_block+query_flex: the union of a query block's choices on FlexAttention."
)


def plot(path: Path, rows: list[dict], label: str) -> None:
    """Time, speed-up over SDPA and peak memory against T, one line per variant and budget (src/report/figures.py)."""
    from src.report.figures import bench_figure, save

    save(bench_figure([r for r in rows if r["status"] == "ok"], label), path)


def write(rows: list[dict], s: Settings, out: Path, elapsed: float | None = None) -> list[Path]:
    """bench.csv, bench.json, bench.md, bench.png in ``out``."""
    info = machine_info(resolve_device(s.device, "--device"))
    label = s.describe(info["device_name"])
    settings = {k: v for k, v in asdict(s).items() if k != "out"}
    settings.update(tile_bytes=TILE_BYTES, hidden=SelectorConf.hidden, d_index=SelectorConf.d_index)
    cross = {size_name(d, h): {f"{v}" + ("" if b == "–" else f" @ {b}"): crossover(rows, v, d, h, b)
                               for v, b in series(rows) if v != "sdpa"}
             for d, h in sizes_of(rows)}
    markdown = (f"# Measured: one attention layer, dense vs sparse, {s.passes}\n\n{label}; torch {info['torch']}."
                f"\n\n{NOTES}\n\n{table(rows)}")
    return write_report(out, "bench", rows, markdown, lambda path: plot(path, rows, label),
                        meta={"machine": info, "settings": settings, "label": label, "elapsed_s": elapsed,
                              "crossover": cross, "notes": NOTES})


# --------------------------------------------------------------------------------------------------------------
# the command line


def budget_list(text: str) -> tuple:
    """'512,0.125' -> (512, 0.125): whole numbers are keys per query, decimals fractions of T."""
    values = []
    for t in (t.strip() for t in text.split(",") if t.strip()):
        try:
            value = int(t) if t.isdigit() else float(t)
            if Budget.ambiguous(value):
                raise ValueError("budget=1 is one key per query: for the whole context write 1.0")
            Budget.parse(value, "budget")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e) if "budget=" in str(e) else
                                             f"expected keys per query (512) or fractions of T (0.125), got {t!r}")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError("expected at least one budget, such as 512,0.125")
    return tuple(values)


def size_list(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sizes = tuple(tuple(int(p) for p in t.split("/")) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(len(s) != 2 or min(s) <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected D_MODEL/N_HEAD[,...] such as 512/8,1024/16, got {text!r}")
    return sizes


def build_parser() -> Parser:
    d = Settings()
    p = Parser(prog="python -m src.bench", description=__doc__.splitlines()[0],
               epilog="python -m src.bench --decode measures generation instead: one decode step against a KV cache "
                      "and whole-model tokens per second (python -m src.bench --decode --help); --train one "
                      "training step of the whole model, dense vs natively sparse (--train --help).")
    p.add_argument("--decode", action="store_true",
                   help="measure generation instead (its own options: --decode --help)")
    p.add_argument("--train", action="store_true",
                   help="measure a whole training step instead (its own options: --train --help)")
    p.add_argument("--teacher", action="store_true",
                   help="the dense teacher's training against nanoGPT's instead (its own options: --teacher --help)")
    p.add_argument("--seq-lens", type=int_list, default=None,
                   help=f"sequence lengths T (default {','.join(map(str, d.seq_lens))}; --quick: "
                        f"{','.join(map(str, QUICK['seq_lens']))})")
    p.add_argument("--sizes", type=size_list, default=None,
                   help="D_MODEL/N_HEAD,... e.g. 256/4,512/8,1024/16 (default 512/8: heads of 64)")
    p.add_argument("--d-model", type=int, default=None, help="one size's width (with --n-head; default 512)")
    p.add_argument("--n-head", type=int, default=None, help="one size's heads (default 8: heads of 64)")
    p.add_argument("--budgets", type=budget_list, default=d.budgets,
                   help="keys per query of the sparse variants: whole numbers are fixed budgets (512), decimals "
                        f"fractions of T (0.125 = T/8) (default {','.join(map(str, d.budgets))})")
    p.add_argument("--block-size", type=int, default=d.block_size, help="block variants: keys per block")
    p.add_argument("--variants", type=name_list, default=d.variants,
                   help=f"comma-separated, from: {', '.join(VARIANTS)} (sdpa is always measured: the baseline; "
                        f"default {','.join(d.variants)})")
    p.add_argument("--batch", type=int, default=d.batch, help="sequences per forward")
    p.add_argument("--repeats", type=int, default=None, help=f"timed runs per cell, median reported (default "
                                                                f"{d.repeats}; --quick: {QUICK['repeats']})")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs before the timed ones")
    p.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)}")
    p.add_argument("--dtype", default=d.dtype, help=f"one of {', '.join(DTYPES)} (bf16 runs on AVX-512 CPUs too)")
    p.add_argument("--max-gb", type=float, default=d.max_gb, help="skip cells whose estimated memory exceeds this")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="per cell: stop repeating after this long; skip a cell one run of which is predicted "
                        "(time ∝ T², from the variant's previous T) to take longer")
    p.add_argument("--max-total-seconds", type=float, default=None,
                   help="the whole run: skip the cells after it (default: no limit)")
    p.add_argument("--seed", type=int, default=d.seed, help="random inputs and weights")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/TIMESTAMP)")
    p.add_argument("--backward", action="store_true",
                   help="time forward + backward to q, k, v (a training step's attention) instead of the forward; "
                        "the variants that have a backward (flex only on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help="a small grid (512d / 8 heads, T 256 and 1024, 3 repeats) in about a minute on 2 CPU cores")
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
    return Settings(seq_lens=tuple(seq_lens), sizes=tuple(sizes), budgets=tuple(args.budgets),
                    block_size=args.block_size, variants=tuple(args.variants), batch=args.batch, repeats=repeats,
                    warmup=args.warmup, device=args.device, dtype=args.dtype, max_gb=args.max_gb,
                    max_seconds=args.max_seconds, max_total_seconds=args.max_total_seconds, seed=args.seed,
                    out=str(args.out) if args.out else None, quick=quick, backward=args.backward)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return command_line(lambda: settings_from_args(build_parser().parse_args(argv)), check_settings,
                        lambda s: s.describe(machine_info(resolve_device(s.device, "--device"))["device_name"]), run,
                        write, table)


if __name__ == "__main__":
    sys.exit(main())
