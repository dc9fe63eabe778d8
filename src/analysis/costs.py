"""The analytic cost model as tables and a figure: ``python -m src.analyze costs`` (src/costs/accounting.py counts;
this module lays out the prototype's tables, reproduced, beside the full accounting, and writes their files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from src.costs import accounting as costs
from src.costs.accounting import ComponentSizes, model_grid
from src.costs.accounting import LEARNED_PAIRS as PAIRS
from src.costs.formulas import PROTO_BATCH, PROTO_HEAD_DIM, PROTO_HIDDEN, PROTO_K
from src.errors import UserError, positive_int
from src.report.tables import markdown_table, megabytes, millions, times, write_csv

# --------------------------------------------------------------------------------------------------------------
# costs: 1. prototype accounting

XL_FOOTNOTE = (
    '¹ The prototype\'s README labels this row "2048d"; its numbers are those of d_model = 1280, T = 2048 '
    "(2·2048²·1280 = 10,737.4 M)."
)


def prototype_markdown() -> str:
    compute = [
        [f"{r.d_model}d / {r.seq_len}" + (" ¹" if (r.d_model, r.seq_len) == (1280, 2048) else ""),
         millions(r.dense_macs), millions(r.sparse_macs), times(r.speedup)]
        for r in costs.prototype_compute_rows()
    ]
    memory = [
        [f"{r.d_model}d / {r.seq_len}" + (" ²" if (r.d_model, r.seq_len) == (512, 512) else ""), str(r.n_head),
         str(r.k), megabytes(r.dense_bytes), megabytes(r.sparse_bytes), f"{r.ratio:.0f}×"]
        for r in costs.prototype_memory_rows()
    ]
    return "\n\n".join([
        "## Prototype accounting (its README's tables, reproduced)",
        "### Compute: MACs (the prototype calls them FLOPs); dense = all heads, no causal mask; "
        "sparse = ONE head's selector + approximator, nothing for the other heads",
        f"Dense = 2·T²·d. Sparse = selector T·hs·h + T·h·T + approximator T·(k·hs)·h + T·h·hs, with hs = "
        f"{PROTO_HEAD_DIM}, k = {PROTO_K}, h = {PROTO_HIDDEN}. Millions of MACs.",
        markdown_table(["d_model / T", "dense (M, all heads)", "sparse (M, one head)", "speed-up"], compute, "lrrr"),
        XL_FOOTNOTE,
        "### Memory: attention-probability matrices only, one layer (batch 8, fp32)",
        f"Dense = B·nh·T²·4 bytes; sparse = B·nh·T·k·4 bytes with k = min(32, T/8); B = {PROTO_BATCH}, "
        "nh = d_model / 64. Activations, weights and the selected indices are not counted. MB = 10⁶ bytes.",
        markdown_table(["d_model / T", "heads", "k", "dense (MB)", "sparse (MB)", "ratio"], memory, "lrrrrr"),
        "² The README's check row (not a size of the grid).",
    ])


def prototype_csv_rows() -> tuple[list[dict], list[dict]]:
    compute = [
        {"d_model": r.d_model, "seq_len": r.seq_len, "dense_macs_all_heads": r.dense_macs,
         "sparse_macs_one_head": r.sparse_macs, "speedup": round(r.speedup, 4)}
        for r in costs.prototype_compute_rows()
    ]
    memory = [
        {"d_model": r.d_model, "seq_len": r.seq_len, "n_head": r.n_head, "k": r.k, "batch": PROTO_BATCH,
         "dense_bytes": r.dense_bytes, "sparse_bytes": r.sparse_bytes, "ratio": round(r.ratio, 4)}
        for r in costs.prototype_memory_rows()
    ]
    return compute, memory


# --------------------------------------------------------------------------------------------------------------
# costs: 2. full accounting


def crossover_text(T: int | None) -> str:
    return f"{T:,}" if T is not None else f"none ≤ {costs.POW2_SEQ_LENS[-1]:,}"


def full_markdown(rows: list[costs.PairCost], crossovers: dict, k: int | None, sizes: ComponentSizes) -> str:
    n_layer = rows[0].n_layer
    dense_rows, seen = [], set()
    for r in rows:
        if r.size.name in seen:
            continue
        seen.add(r.size.name)
        s = r.size
        dense_rows.append([s.name, f"{s.d_model} / {s.n_head} / {s.seq_len}", millions(r.dense_attn.flops),
                           millions(r.rest.flops), f"{r.attn_share:.1%}", millions(r.dense_model_flops)])
    pair_rows = [
        [r.size.name, r.pair, str(r.k), millions(r.sparse_attn.flops), times(r.attn_speedup),
         millions(r.sparse_model_flops), times(r.model_speedup), crossover_text(crossovers[r.size, r.pair])]
        for r in rows
    ]
    return "\n\n".join([
        "## Full accounting: FLOPs = 2·MACs, every head, causal, selector included",
        f"Forward pass of one sequence. n_layer = {n_layer}; k = {'T/8' if k is None else k} keys per query; "
        f"mlp selector hidden {sizes.selector_hidden}, mlp approximator hidden {sizes.approximator_hidden}, "
        f"indexer d_index {sizes.d_index}, block size {sizes.block}; softmax {sizes.softmax_ops} FLOPs per score, "
        f"top-k {sizes.topk_ops} FLOP per candidate. Attention = the attention core (QK^T, softmax, PV or "
        "selector + approximator); projections (4·T·d² MACs) + MLP (8·T·d² MACs) are the same for dense and "
        "sparse. Millions of FLOPs.",
        "### Dense (SDPA) per layer and per model",
        markdown_table(["model", "d_model / heads / T", "attention (M/layer)", "proj. + MLP (M/layer)",
                        "attention share", f"model (M, {n_layer} layers)"], dense_rows, "llrrrr"),
        "### Sparse pairs (selector+approximator) in every head of every layer",
        markdown_table(["model", "pair", "k", "attention (M/layer)", "attention speed-up", "model (M)",
                        "model speed-up", "crossover T ³"], pair_rows, "lllrrrrr"),
        "k = keys each query's approximator reads (block: rounded up to whole blocks of the block size).",
        "³ Smallest power-of-two T at which the pair's attention core costs fewer FLOPs than dense, at this "
        "d_model / heads and the same k rule.",
    ])


def full_csv_rows(rows: list[costs.PairCost], crossovers: dict, sizes: ComponentSizes) -> list[dict]:
    return [
        {"model": r.size.name, "d_model": r.size.d_model, "n_head": r.size.n_head, "seq_len": r.size.seq_len,
         "n_layer": r.n_layer, "k": r.k, "pair": r.pair, "selector_hidden": sizes.selector_hidden,
         "approximator_hidden": sizes.approximator_hidden, "d_index": sizes.d_index, "block": sizes.block,
         "dense_attn_flops": r.dense_attn.flops, "sparse_attn_flops": r.sparse_attn.flops,
         "rest_flops": r.rest.flops, "attn_speedup": round(r.attn_speedup, 4),
         "dense_model_flops": r.dense_model_flops, "sparse_model_flops": r.sparse_model_flops,
         "model_speedup": round(r.model_speedup, 4), "attn_share": round(r.attn_share, 4),
         "crossover_seq_len": crossovers[r.size, r.pair] or ""}
        for r in rows
    ]


# --------------------------------------------------------------------------------------------------------------
# costs: 3. the plot

SCALING_WIDTH = 4  # the right panel varies T at the width of the grid's 5th size (large: 1024 d_model, 16 heads)
SCALING_SEQ_LENS = tuple(2**i for i in range(4, 17))  # 16 ... 65,536


def compute_scaling_series(rows: list[costs.PairCost], k: int | None, sizes: ComponentSizes) -> dict:
    """What the compute-scaling figure draws (src/report/figures.py ``compute_scaling_figure``): per-layer costs
    across the model grid in both accountings, and each pair's attention speed-up against T at one width of it."""
    s, Ts = model_grid()[SCALING_WIDTH], SCALING_SEQ_LENS
    proto = costs.prototype_compute_rows()
    by_pair = {p: [r for r in rows if r.pair == p] for p in PAIRS}
    first = by_pair[PAIRS[0]]
    return {
        "pairs": list(PAIRS), "grid": [(g.d_model, g.seq_len) for g in model_grid()], "k": k,
        "proto_dense": [r.dense_macs for r in proto], "proto_sparse": [r.sparse_macs for r in proto],
        "dense": [r.dense_attn.flops for r in first], "rest": [r.rest.flops for r in first],
        "sparse": {p: [r.sparse_attn.flops for r in rs] for p, rs in by_pair.items()},
        "width": (s.d_model, s.n_head), "seq_lens": list(Ts),
        "proto_speedup": [costs.prototype_dense_macs(T, s.d_model) / costs.prototype_sparse_macs(T) for T in Ts],
        "speedup": {p: [costs.dense_layer(s.d_model, s.n_head, T, sizes).flops
                        / costs.sparse_layer(p, s.d_model, s.n_head, T, k, sizes).flops for T in Ts] for p in PAIRS},
        "crossover": {p: costs.crossover_seq_len(p, s.d_model, s.n_head, k=k, sizes=sizes) for p in PAIRS},
    }


def plot_compute_scaling(path: Path, rows: list[costs.PairCost], k: int | None, sizes: ComponentSizes) -> None:
    from src.report.figures import compute_scaling_figure, save

    series = compute_scaling_series(rows, k, sizes)
    series["crossover_text"] = {p: crossover_text(T) for p, T in series["crossover"].items()}
    save(compute_scaling_figure(series), path)


# --------------------------------------------------------------------------------------------------------------
# subcommand: costs


def add_costs_arguments(p: argparse.ArgumentParser) -> None:
    default = ComponentSizes()
    p.add_argument("--out", type=Path, default=Path("outputs/analysis/costs"), help="folder for the files")
    p.add_argument("--n-layer", type=positive_int, default=4, help="layers per model (default 4)")
    p.add_argument("--k", type=positive_int, default=None, help="keys kept per query (default T/8)")
    p.add_argument("--selector-hidden", type=positive_int, default=default.selector_hidden)
    p.add_argument("--approximator-hidden", type=positive_int, default=default.approximator_hidden)
    p.add_argument("--d-index", type=positive_int, default=default.d_index)
    p.add_argument("--block", type=positive_int, default=default.block)


def run_costs(args: argparse.Namespace) -> None:
    sizes = ComponentSizes(args.selector_hidden, args.approximator_hidden, args.d_index, args.block)
    rows = costs.full_rows(model_grid(), PAIRS, args.n_layer, args.k, sizes)
    crossovers = {(s, p): costs.crossover_seq_len(p, s.d_model, s.n_head, k=args.k, sizes=sizes)
                  for s in model_grid() for p in PAIRS}
    proto_md, full_md = prototype_markdown(), full_markdown(rows, crossovers, args.k, sizes)
    proto_compute, proto_memory = prototype_csv_rows()

    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "costs_prototype.md").write_text(proto_md + "\n")
        (out / "costs_full.md").write_text(full_md + "\n")
        write_csv(out / "costs_prototype.csv", proto_compute)
        write_csv(out / "memory_prototype.csv", proto_memory)
        write_csv(out / "costs_full.csv", full_csv_rows(rows, crossovers, sizes))
        plot_compute_scaling(out / "compute_scaling.png", rows, args.k, sizes)
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}; pass another folder with --out") from None
    print(proto_md + "\n\n" + full_md + "\n")
    print(f"wrote {out}/: costs_prototype.md costs_full.md costs_prototype.csv memory_prototype.csv "
          "costs_full.csv compute_scaling.png")


