"""The one-minute tour: ``python -m src.demo`` (about a minute on 2 CPU cores).

1. the cost tables: the prototype's own accounting (its README's numbers, reproduced) beside the full
   accounting (every head, causal, selector included) — src/costs/;
2. a measured forward time of one attention layer, SDPA against sparse variants, at two sequence lengths —
   src/bench/layer.py (each cell's timing capped, so the tour stays within a minute);
3. the prototype's five steps end to end on its own random tokens, with a short budget: teacher -> selector ->
   approximator -> evaluation, printing its "Expected Output" lines with this run's numbers — src/stages/.

It says what it measured and how long each part took. ``--tiny`` shrinks every part (for tests); the full picture
is ``python -m src.analyze costs``, ``python -m src.bench`` and ``python -m src.train +experiment=prototype``.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the demo's time counts its imports (torch, Lightning) too

import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from src.analysis.costs import prototype_markdown  # noqa: E402
from src.costs import accounting as costs  # noqa: E402
from src.errors import Parser, UserError  # noqa: E402
from src.report.tables import markdown_table, times  # noqa: E402
from src.stages.results import expected_output  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def section(title: str) -> None:
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}", flush=True)


# ---------------------------------------------------------------------------------------------- 1. cost tables


DEMO_PAIRS = ("mlp+mlp", "indexer+softmax", "block+softmax")


def cost_tables(k: int | None = None) -> str:
    """(a) the prototype's own tables, reproduced; (b) the full accounting of three pairs at the same sizes."""
    rows = []
    for size in costs.model_grid():
        cells = [f"{size.name} ({size.d_model}d / {size.n_head}h / T={size.seq_len})"]
        for pair in DEMO_PAIRS:
            c = costs.pair_cost(size, pair, k=k)
            cells += [times(c.attn_speedup), times(c.model_speedup)]
        rows.append(cells)
    header = ["model"] + [f"{p} {part}" for p in DEMO_PAIRS for part in ("attention", "whole model")]
    cross = {pair: costs.crossover_seq_len(pair, 1024, 16, k=k) for pair in DEMO_PAIRS}
    return "\n".join([
        "(a) " + prototype_markdown().lstrip("# "),
        "",
        "(b) Full accounting: speed-up over dense attention in FLOPs (above 1: fewer), every head, causal, the",
        "selector included, k = T/8, 4 layers (src/costs/; every pair: python -m src.analyze costs).",
        "",
        markdown_table(header, rows, "l" + "r" * (len(header) - 1)),
        "",
        "Attention core cheaper than dense, d_model 1024 / 16 heads, from: "
        + "; ".join(f"{p} T = {cross[p] or 'never (up to 1M)'}" for p in DEMO_PAIRS) + ".",
    ])


# ---------------------------------------------------------------------------------------------- 2. measured


def ms_text(row: dict) -> str:
    return f"{row['median_ms']:.1f}" if row["median_ms"] is not None else f"skipped: {row['note']}"


CELL_SECONDS = 2.0  # the benchmark's --max-seconds for the tour: no cell repeats past it, and a cell predicted (time
#                    ∝ T²) to take longer for one run is skipped and said so -- the tour's time cap


def timings(seq_lens: tuple[int, ...], d_model: int, n_head: int, variants: tuple[str, ...], repeats: int,
            budget: int | float) -> str:
    from src.bench import layer

    s = layer.Settings(seq_lens=seq_lens, sizes=((d_model, n_head),), budgets=(budget,), variants=variants,
                       repeats=repeats, max_seconds=CELL_SECONDS, memory=False, phases=False)
    rows = [[str(r["T"]), r["variant"], ms_text(r), times(r["speedup"]) if r["speedup"] else "–",
             "–" if r["variant"] == "sdpa" else times(r["flop_limit"])] for r in layer.run(s, log=lambda line: None)]
    return "\n".join([
        f"One attention layer, forward, batch 1, d_model {d_model} / {n_head} heads, fp32, a budget of "
        f"{layer.parse_budget(budget)} per query, selection included; median of up to {repeats} runs after a warm-up, "
        f"at most {CELL_SECONDS:g} s each (src/bench/layer.py; the full grid: python -m src.bench). FLOP limit: dense "
        "causal FLOPs / sparse FLOPs.",
        "",
        markdown_table(["T", "variant", "median ms", "speed-up vs SDPA", "FLOP limit"], rows, "rlrrr"),
    ])


# ---------------------------------------------------------------------------------------------- 3. pipeline


def prototype_run(run_dir: Path, steps: tuple[int, int, int], extra: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import src.train  # registers the schemas and resolvers

    overrides = ["+experiment=prototype", "data=synthetic", f"trainer.max_steps={steps[0]}",
                 f"trainer.val_every={max(1, steps[0] // 2)}", f"selector.max_steps={steps[1]}",
                 f"approximator.max_steps={steps[2]}", "trainer.enable_progress_bar=false", "trainer.sample_chars=0",
                 "trainer.limit_val_batches=4", "evaluate.time_forward=false",  # periodic validations: a glance;
                 *extra]  # the final numbers read the whole splits; the timings above are the tour's speed
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    print("python -m src.train " + " ".join(overrides), flush=True)
    return src.train.train(cfg, run_dir)


def summary(result: dict) -> str:
    """The prototype's "Expected Output" lines with this run's numbers (as results.md has them), and the rest."""
    e = result["evaluate"]
    return "\n".join([
        *expected_output(e, 0, 0, "L0H0"),
        "",
        f"also: teacher test loss {e['test/teacher_loss']:.4f}, hybrid {e['test/hybrid_loss']:.4f} "
        f"({e['test/loss_change_pct']:+.2f}%), attention-mass recall {e['test/mass_recall']:.3f}, "
        f"approximator relative error {e['test/approx_rel_err']:.3f}",
    ])


# ---------------------------------------------------------------------------------------------- main


def quiet() -> None:
    """Lightning's per-run chatter (GPU available, model summary) would bury the demo's own lines."""
    import lightning.pytorch  # noqa: F401  its import sets its loggers' level: quieten them after it

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "src"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m src.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folder (default outputs/demo/<timestamp>)")
    parser.add_argument("--tiny", action="store_true", help="shrink every part to seconds (for tests)")
    try:
        args = parser.parse_args(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    quiet()
    out = args.out or Path("outputs/demo") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if args.tiny:
        seq_lens, d_model, n_head, variants, repeats = (128, 256), 64, 2, ("sdpa", "indexer+softmax", "block+tiles"), 1
        budget = 0.25
        steps, extra = (4, 2, 2), ["model.seq_len=32", "data.num_tokens=5000", "trainer.limit_val_batches=2"]
    else:
        seq_lens, d_model, n_head, repeats = (1024, 4096), 512, 8, 3
        variants, budget = ("sdpa", "indexer+softmax", "block+tiles"), 512
        steps, extra = (300, 300, 400), []
    start, spent = STARTED, {}
    try:
        section("1/3  Cost model: the prototype's accounting against the full one (python -m src.analyze costs)")
        t = time.perf_counter()
        print(cost_tables())
        spent["cost tables"] = time.perf_counter() - t

        section("2/3  Measured: SDPA against sparse attention, one layer (python -m src.bench)")
        t = time.perf_counter()
        print(timings(seq_lens, d_model, n_head, variants, repeats, budget))
        spent["timings"] = time.perf_counter() - t

        section("3/3  The prototype's five steps on its random tokens (python -m src.train +experiment=prototype "
                "data=synthetic), short budget")
        t = time.perf_counter()
        result = prototype_run(out, steps, extra)
        spent["pipeline"] = time.perf_counter() - t
        print(summary(result))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    section("Done")
    print(f"measured: FLOP tables (arithmetic), {len(seq_lens)} sequence lengths × {len(variants)} variants "
          f"timed, one prototype pipeline ({steps[0]} teacher / {steps[1]} selector / {steps[2]} approximator steps)")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()) + f"; total {total:.1f} s")
    print(f"run folder: {out} (results.md; TensorBoard: tensorboard --logdir {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
