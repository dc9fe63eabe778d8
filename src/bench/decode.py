"""Measured speed of generation, dense against sparse: ``python -m src.bench --decode``.

What is timed (torch.utils.benchmark, blocked autorange, median; torch.no_grad; random weights and cache contents:
the time of a step does not depend on them):

* **one attention layer, one decode step** against a cache of L keys and values (all heads; the QKV and output
  projections, the same for both, left out): ``sdpa`` -- F.scaled_dot_product_attention of the new query over the
  whole cache -- against ``block`` sparse decoding (src/sparse/decode.py) under a budget of ``--budget`` keys in
  blocks of ``--block-size``, summaries included. Two rows for the sparse layer: ``per token`` times a whole query
  block of steps (the first scores the L / block_size summaries, picks blocks and copies them into a tile; the others
  write one row of the tile and attend over it) and divides by block_size; ``scoring step`` times that first step
  alone, the slowest one.
* **the whole model, one generated token** (``--n-layer`` layers, every head of every layer sparse for ``block``):
  token in, logits out, through the KV cache (src/model.py), at a context of L tokens; tokens per second.

Each speed-up is reported beside its FLOP limit (src/costs/formulas.py: dense FLOPs over the sparse step's, the
selector's scoring included). A decode step is bound by memory reads more than by arithmetic -- dense attention
reads every cached key and value, and once the cache outgrows the CPU's caches it reads them from DRAM -- so a
measured speed-up can pass its FLOP limit. Writes decode.csv, decode.json (machine and settings), decode.md and
decode.png to ``--out``, one row per cell with ``L`` and ``speedup``. Bad arguments end with one line
``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from src.approximators import build_approximator
from src.bench.harness import DTYPES, command_line, write_bench
from src.bench.timing import machine_info, median_seconds
from src.config import DEVICES, resolve_device
from src.costs import formulas as costs
from src.errors import Parser, UserError, int_list
from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.model import GPT, GPTConfig, KVCache
from src.report.tables import markdown_table
from src.selectors import build_selector
from src.sparse import Budget, SparseAttention, SparseDecoder, n_blocks

QUICK = dict(lens=(1024, 8192), model_lens=(4096,), min_run_time=0.2)  # --quick: well under a minute on 2 cores


@dataclass
class DecodeSettings:
    lens: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768, 65536)  # cache lengths L of the layer cells
    model_lens: tuple[int, ...] = (8192, 32768)  # contexts of the whole-model cells
    d_model: int = 512
    n_head: int = 8  # heads of 64
    n_layer: int = 4  # whole-model cells
    vocab: int = 65  # whole-model cells: a character vocabulary (tiny-shakespeare's)
    budget: int = 512  # keys per query of the sparse decoder (DeepSeek V3.2 reads 2048 of 128k; MoBA / NSA ~1-2k)
    block_size: int = 64  # NSA's and MoBA's block of keys
    d_index: int = 16  # the block selector's index width (conf/selector/block.yaml)
    min_run_time: float = 1.0  # seconds each cell is timed for (torch.utils.benchmark blocked_autorange)
    device: str = "auto"
    dtype: str = "fp32"
    seed: int = 0
    out: str | None = None  # None: outputs/bench/decode_TIMESTAMP
    quick: bool = False

    def describe(self, device: str) -> str:
        return (f"measured, {device}, {self.dtype}, batch 1, {self.d_model}d / {self.n_head} heads, budget "
                f"{self.budget} keys in blocks of {self.block_size}, d_index {self.d_index}, "
                f"{torch.get_num_threads()} threads, median of blocked autorange over {self.min_run_time:g} s")


def check(s: DecodeSettings) -> None:
    if not s.lens and not s.model_lens:
        raise UserError("--lens and --model-lens are both empty: give at least one cache length")
    for name in ("d_model", "n_head", "n_layer", "vocab", "budget", "block_size", "d_index"):
        if getattr(s, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if s.d_model % s.n_head:
        raise UserError(f"--d-model {s.d_model} must be divisible by --n-head {s.n_head}")
    if s.min_run_time <= 0:
        raise UserError("--min-run-time must be positive")
    if s.dtype not in DTYPES:
        raise UserError(f"--dtype {s.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    short = [L for L in (*s.lens, *s.model_lens) if L < s.budget]
    if short:
        raise UserError(f"cache length {short[0]} is shorter than the budget of {s.budget} keys: nothing to skip "
                        "(give longer --lens / --model-lens or a smaller --budget)")
    resolve_device(s.device, "--device")


def seconds(fn, s: DecodeSettings, device: torch.device) -> float:
    """Median seconds of one call of ``fn()``: torch.utils.benchmark's blocked autorange over ``s.min_run_time``."""
    return median_seconds(fn, (), device, warmup=0, min_run_time=s.min_run_time)


def room(L: int, block_size: int) -> int:
    """Cache positions for a context of L and one more query block, in whole blocks."""
    return n_blocks(L + block_size, block_size) * block_size


def sparse_layer(s: DecodeSettings, max_len: int, device, dtype) -> SparseAttention:
    """Every head sparse: the block selector (random weights) + exact softmax, under the budget."""
    hs = s.d_model // s.n_head
    selector = build_selector("block", s.n_head, s.d_model, hs, max_len, d_index=s.d_index, block_size=s.block_size)
    approximator = build_approximator("softmax", s.n_head, hs, s.budget)
    return SparseAttention(selector, approximator, Budget.parse(s.budget)).to(device, dtype)


def row(kind: str, L: int, variant: str, seconds: float, s: DecodeSettings, keys: int, limit: float | None,
        base: float | None, note: str = "") -> dict:
    speedup = None if base is None else base / seconds
    return dict(kind=kind, L=L, variant=variant, keys_read=keys, median_ms=round(seconds * 1e3, 4),
                tokens_per_s=round(1 / seconds, 1) if kind == "model" else None,
                speedup=None if speedup is None else round(speedup, 3),
                flop_limit=None if limit is None else round(limit, 2),
                of_limit=None if speedup is None or limit is None else round(speedup / limit, 3),
                d_model=s.d_model, n_head=s.n_head, n_layer=s.n_layer if kind == "model" else 1, budget=s.budget,
                block_size=s.block_size, note=note)


@torch.no_grad()
def layer_rows(L: int, s: DecodeSettings, device, dtype) -> list[dict]:
    """One attention layer's decode step at cache length L: SDPA, block decoding per token and its scoring step."""
    torch.manual_seed(s.seed)
    nh, hs, bs = s.n_head, s.d_model // s.n_head, s.block_size
    max_len = room(L, bs)
    k, v = (torch.randn(1, nh, max_len, hs, device=device, dtype=dtype) for _ in range(2))
    q_t = torch.randn(1, nh, 1, hs, device=device, dtype=dtype)
    x_t = torch.randn(1, 1, s.d_model, device=device, dtype=dtype)
    dense = seconds(lambda: F.scaled_dot_product_attention(q_t, k[:, :, :L + 1], v[:, :, :L + 1]), s, device)
    decoder = SparseDecoder(sparse_layer(s, max_len, device, dtype),
                            torch.randn(1, L, s.d_model, device=device, dtype=dtype), k[:, :, :L], k, v)

    def query_block():  # positions L .. L + bs - 1: one scoring step, then bs - 1 steps reading the tile
        for t in range(L, L + bs):
            decoder.step(x_t, q_t, k, v, t)

    per_token = seconds(query_block, s, device) / bs
    scoring = seconds(lambda: decoder.step(x_t, q_t, k, v, L), s, device)
    keys = decoder.n_keep * bs
    d = costs.dense_decode(L, s.d_model, nh).flops
    sparse = costs.block_decode(L, s.d_model, nh, keys, bs, s.d_index)
    first = costs.block_decode(L, s.d_model, nh, keys, bs, s.d_index, scoring_step=True)
    return [row("layer", L, "sdpa", dense, s, L, None, dense),
            row("layer", L, "block, per token", per_token, s, keys, d / sparse.flops, dense,
                f"mean of a query block's {bs} steps"),
            row("layer", L, "block, scoring step", scoring, s, keys, d / first.flops, dense,
                "the first step of a query block: scores the summaries, copies the chosen blocks")]


@torch.no_grad()
def model_rows(L: int, s: DecodeSettings, device, dtype) -> list[dict]:
    """The whole model generating one token at a context of L: teacher (SDPA) and every head block-sparse."""
    torch.manual_seed(s.seed)
    bs = s.block_size
    cfg = GPTConfig(vocab_size=s.vocab, seq_len=room(L, bs), n_layer=s.n_layer, n_head=s.n_head,
                    d_model=s.d_model, pos="rope")
    gpt = GPT(cfg).to(device, dtype).eval()
    cache = KVCache(cfg, 1, device, dtype)
    for layer in cache.layers:
        layer.k.normal_(), layer.v.normal_()
    cache.rewind(L)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)

    def dense_token():
        gpt(token, cache=cache)
        cache.rewind(L)

    dense = seconds(dense_token, s, device)
    spec = HybridSpec.from_config(cfg, layers="all", heads="all", budget=s.budget)
    parts = SparseParts(spec, cfg, {"name": "block", "block_size": bs, "d_index": s.d_index},
                        {"name": "softmax"}).to(device, dtype)
    attention = hybrid_attention(gpt, spec, parts)
    for i, layer in enumerate(cache.layers):  # the summaries of a random context of L tokens
        layer.state = SparseDecoder(attention[i].sparse, torch.randn(1, L, s.d_model, device=device, dtype=dtype),
                                    layer.k[:, :, :L], layer.k, layer.v)

    def query_block():
        for _ in range(bs):
            gpt(token, attention=attention, cache=cache)
        cache.rewind(L)

    sparse = seconds(query_block, s, device) / bs
    keys = cache.layers[0].state.n_keep * bs
    per_layer = costs.block_decode(L, s.d_model, s.n_head, keys, bs, s.d_index)
    limit = (costs.decode_model(s.d_model, s.n_layer, s.vocab, costs.dense_decode(L, s.d_model, s.n_head)).flops
             / costs.decode_model(s.d_model, s.n_layer, s.vocab, per_layer).flops)
    return [row("model", L, "sdpa", dense, s, L, None, dense),
            row("model", L, "block, per token", sparse, s, keys, limit, dense,
                f"mean of a query block's {bs} tokens")]


def run(s: DecodeSettings, log=print) -> list[dict]:
    check(s)
    device, dtype = resolve_device(s.device, "--device"), DTYPES[s.dtype]
    cells = [("layer", L) for L in sorted(s.lens)] + [("model", L) for L in sorted(s.model_lens)]
    rows = []
    for i, (kind, L) in enumerate(cells, 1):
        try:
            new = (layer_rows if kind == "layer" else model_rows)(L, s, device, dtype)
        except (RuntimeError, MemoryError) as e:  # out of memory at a long L: say so, keep the other cells
            first = (str(e).splitlines() or [""])[0][:160]
            log(f"[{i}/{len(cells)}] {kind} L={L}: skipped ({type(e).__name__}: {first})")
            continue
        rows += new
        for r in new:
            log(f"[{i}/{len(cells)}] {cell_text(r)}")
    return rows


def cell_text(r: dict) -> str:
    text = f"{r['kind']:<5} L={r['L']:<6} {r['variant']:<20} {r['median_ms']:9.3f} ms"
    if r["tokens_per_s"] is not None:
        text += f" {r['tokens_per_s']:8.1f} tokens/s"
    if r["variant"] != "sdpa":
        text += f"  {r['speedup']:.2f}× SDPA (FLOP limit {r['flop_limit']:.1f}×)"
    return text


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        what = "1 layer, 1 step" if r["kind"] == "layer" else f"model ({r['n_layer']} layers), 1 token"
        up = "1.00× (baseline)" if r["variant"] == "sdpa" else f"{r['speedup']:.2f}×"
        limit = "–" if r["flop_limit"] is None else f"{r['flop_limit']:.1f}×"
        of = "–" if r["of_limit"] is None else f"{r['of_limit']:.0%}"
        tps = "–" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"
        cells.append([what, r["L"], r["variant"], r["keys_read"], f"{r['median_ms']:.3f}", tps, up, limit, of,
                      r["note"]])
    return markdown_table(["what", "L", "variant", "keys read", "median ms", "tokens/s", "speed-up vs SDPA",
                           "FLOP limit", "of limit", "note"], cells, "lrlrrrrrrl")


def write(rows: list[dict], s, out: Path, elapsed: float) -> list[Path]:
    from src.report.figures import decode_figure

    return write_bench(out, "decode", "generation, dense vs block-sparse decoding", rows, s, table(rows),
                       decode_figure, __doc__, elapsed)


HELP = {  # the --help text of each size option
    "d_model": "model width", "n_head": "attention heads (head size d_model / n_head)",
    "n_layer": "layers of the whole-model cells", "vocab": "vocabulary of the whole-model cells",
    "budget": "keys each query of the sparse decoder reads (rounded up to whole blocks)",
    "block_size": "keys per block of the block selector", "d_index": "width of the block selector's index vectors",
}


def build_parser() -> Parser:
    d = DecodeSettings()
    p = Parser(prog="python -m src.bench --decode", description=__doc__.splitlines()[0])
    p.add_argument("--decode", action="store_true", help="this benchmark (without it: one layer's forward)")
    p.add_argument("--lens", type=int_list, default=None,
                   help=f"cache lengths of the layer cells (default {','.join(map(str, d.lens))})")
    p.add_argument("--model-lens", type=lambda t: () if t.strip() in ("", "none") else int_list(t), default=None,
                   help=f"contexts of the whole-model cells (default {','.join(map(str, d.model_lens))}; none: skip)")
    for name, text in HELP.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name), help=text)
    p.add_argument("--min-run-time", type=float, default=d.min_run_time, help="seconds each cell is timed for")
    p.add_argument("--device", default=d.device, help=f"one of {', '.join(DEVICES)}")
    p.add_argument("--dtype", default=d.dtype, help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--seed", type=int, default=d.seed, help="random weights and cache contents")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/decode_TIMESTAMP)")
    p.add_argument("--quick", action="store_true", help="L 1024 and 8192, the model at 4096, 0.2 s per cell")
    return p


def settings_from_args(a: argparse.Namespace) -> DecodeSettings:
    quick = QUICK if a.quick else {}
    return DecodeSettings(
        lens=tuple(a.lens or quick.get("lens", DecodeSettings.lens)),
        model_lens=tuple(a.model_lens if a.model_lens is not None else quick.get("model_lens",
                                                                                   DecodeSettings.model_lens)),
        d_model=a.d_model, n_head=a.n_head, n_layer=a.n_layer, vocab=a.vocab, budget=a.budget,
        block_size=a.block_size, d_index=a.d_index,
        min_run_time=quick.get("min_run_time", a.min_run_time) if a.min_run_time == DecodeSettings.min_run_time
        else a.min_run_time,
        device=a.device, dtype=a.dtype, seed=a.seed, out=str(a.out) if a.out else None, quick=a.quick)


def main(argv: list[str] | None = None) -> int:
    return command_line(lambda: settings_from_args(build_parser().parse_args(argv)), check,
                        lambda s: s.describe(machine_info(resolve_device(s.device, "--device"))["device_name"]), run,
                        write, table, "decode_")


if __name__ == "__main__":
    sys.exit(main())
