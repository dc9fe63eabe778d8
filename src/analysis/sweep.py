"""Gather a multirun folder into one table: ``python -m src.analyze sweep DIR``.

Every job folder of a Hydra sweep (``DIR/<num>_<model>/``) becomes one row: the settings the sweep varied, the
job's size and keys per query, its quality against the teacher (from the pipeline's ``metrics.json``), the analytic
FLOPs of its configuration (src/costs/accounting.py, full accounting) and the attention-layer timing it measured
(``pipeline.measure_speed=true``, as the scaling grid sets). A failed job (``error.json``, written by src/train.py)
or one that never finished is a row too, with its error, so a sweep with a bad job still gives a table of the others.

Writes DIR/sweep.csv, sweep.json, sweep.md and sweep.png.
"""

from __future__ import annotations

from pathlib import Path

from src.analysis.jobs import job_config, job_status, jobs_of, swept
from src.costs.accounting import flops_columns
from src.errors import UserError
from src.report.tables import markdown_table, num, write_report

MAKE = "python -m src.train -m +experiment=scaling_grid"  # a multirun this analysis reads
COLUMNS = (
    "job", "status", "swept", "model", "d_model", "n_head", "n_layer", "seq_len", "k", "selector", "approximator",
    "sparse_heads", "teacher_loss", "hybrid_loss", "loss_change_pct", "kl", "logits_rel_err", "mass_recall",
    "recall", "top1_acc", "attn_flops_speedup", "model_flops_speedup", "dense_model_flops", "sparse_model_flops",
    "sdpa_ms", "sparse_ms", "measured_speedup", "device", "error",
)
EVALUATE_KEYS = {
    "teacher_loss": "test/teacher_loss", "hybrid_loss": "test/hybrid_loss", "loss_change_pct": "test/loss_change_pct",
    "kl": "test/kl_teacher_hybrid", "logits_rel_err": "test/logits_rel_err", "mass_recall": "test/mass_recall",
    "recall": "test/recall", "top1_acc": "test/top1_acc",
}


def job_row(job: Path, varied: str = "") -> dict:
    cfg = job_config(job)
    m = cfg.get("model", {})
    row: dict = {
        "job": job.name, "swept": varied, "model": m.get("name"), "d_model": m.get("d_model"),
        "n_head": m.get("n_head"), "n_layer": m.get("n_layer"), "seq_len": m.get("seq_len"),
        "selector": cfg.get("selector", {}).get("name"), "approximator": cfg.get("approximator", {}).get("name"),
    }
    row.update(flops_columns(cfg))  # k (keys read per query), sparse heads and the FLOPs
    status, metrics = job_status(job)
    row.update(status)
    if metrics:
        for name, key in EVALUATE_KEYS.items():
            row[name] = metrics["evaluate"].get(key)
        speed = metrics.get("speed") or {}
        row.update({k: speed.get(k) for k in ("sdpa_ms", "sparse_ms", "measured_speedup", "device")})
    return {c: row.get(c) for c in COLUMNS}


def gather(root: Path) -> list[dict]:
    """One row per job; a sweep without a single pipeline job (e.g. teachers only) has nothing to compare: one line
    saying where its results are."""
    jobs = jobs_of(root, MAKE)
    varied = swept(jobs)
    rows = [job_row(job, varied[job.name]) for job in jobs]
    if all(r["status"] in ("not a pipeline", "unfinished", "failed") for r in rows) and any(
            r["status"] == "not a pipeline" for r in rows):
        raise UserError(f"{root} holds no pipeline job (hybrid against teacher): `analyze sweep` compares hybrids; "
                        f"each job's results are in its metrics.json, and TensorBoard compares them: tensorboard "
                        f"--logdir {root}")
    return rows


def markdown(rows: list[dict], root: Path) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        f"# Sweep {root}",
        "",
        f"{len(rows)} jobs: {len(ok)} finished, {len(rows) - len(ok)} failed or unfinished.",
        "Quality on the test split against each job's own teacher; k: keys each query reads; FLOPs: full accounting "
        "(src/costs/accounting.py: every head, causal, selector included; forward of one sequence); measured: one "
        "attention layer's forward, median ms, SDPA vs the sparse variant, on the job's device (src/bench/speed.py).",
        "",
        markdown_table(
            ["job", "swept", "model", "d / heads / T", "k", "pair", "loss change", "KL", "mass recall",
             "logits rel. err", "attn FLOPs speed-up", "model FLOPs speed-up", "SDPA ms", "sparse ms",
             "measured speed-up"],
            [[r["job"], r["swept"] or "–", r["model"], f"{r['d_model']} / {r['n_head']} / {r['seq_len']}", num(r["k"]),
              f"{r['selector']}+{r['approximator']}", f"{num(r['loss_change_pct'], '+.2f')}%", num(r["kl"]),
              num(r["mass_recall"]), num(r["logits_rel_err"]), f"{num(r['attn_flops_speedup'], '.3g')}×",
              f"{num(r['model_flops_speedup'], '.3g')}×", num(r["sdpa_ms"], ".3g"), num(r["sparse_ms"], ".3g"),
              f"{num(r['measured_speedup'], '.3g')}×"] for r in ok],
            "lllllrlrrrrrrrr"),
    ]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "## Failed or unfinished jobs", ""]
        lines += [f"- {r['job']} ({r['status']}): {r['error']}" for r in bad]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Speed-ups, loss change and mass recall of the finished jobs against what the sweep varied (src/report/figures.py,
    as the notebook)."""
    from src.report.figures import save, sweep_figure

    ok = [r for r in rows if r["status"] == "ok"]
    devices = sorted({str(r["device"]) for r in ok if r.get("device")})
    save(sweep_figure(rows, f"sweep {path.parent.name}: {len(ok)} of {len(rows)} jobs finished"
                            + (f"; measured on {', '.join(devices)}" if devices else "")), path)


def write_tables(rows: list[dict], root: Path, stem: str, columns, markdown_of, plot_to) -> list[Path]:
    """ROOT/STEM.csv, .json, .md (``markdown_of(rows, root)``) and .png (``plot_to(rows, path)``): the outputs of
    every multirun analysis (``analyze sweep``, ``analyze budget``)."""
    return write_report(root, stem, rows, markdown_of(rows, root), lambda path: plot_to(rows, path), columns=columns,
                        fix="check the folder's permissions and free space")


def write(rows: list[dict], root: Path) -> list[Path]:
    return write_tables(rows, root, "sweep", COLUMNS, markdown, plot)
