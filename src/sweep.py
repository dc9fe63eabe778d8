"""Gather a multirun folder into one table: ``python -m src.analyze sweep DIR``.

Every job folder of a Hydra sweep (``DIR/<num>_<model>/``) becomes one row: its settings, its quality against the
teacher (from the pipeline's ``metrics.json``), the analytic FLOPs of its configuration (src/costs.py, full
accounting) and the attention-layer timing it measured (``pipeline.measure_speed=true``, as the scaling grid
sets). A failed job (``error.json``, written by src/train.py) or one that never finished is a row too, with its
error, so a sweep with a bad job still gives a table of the others.

Writes DIR/sweep.csv, sweep.json, sweep.md and sweep.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from src.costs import flops_columns
from src.errors import UserError
from src.report import markdown_table, write_report
from src.runs import job_number, register_resolvers

COLUMNS = (
    "job", "status", "model", "d_model", "n_head", "n_layer", "seq_len", "top_k", "selector", "approximator",
    "sparse_heads", "teacher_loss", "hybrid_loss", "loss_change_pct", "kl", "logits_rel_err", "mass_recall",
    "recall", "top1_acc", "attn_flops_speedup", "model_flops_speedup", "dense_model_flops", "sparse_model_flops",
    "sdpa_ms", "sparse_ms", "measured_speedup", "device", "error",
)
EVALUATE_KEYS = {
    "teacher_loss": "test/teacher_loss", "hybrid_loss": "test/hybrid_loss", "loss_change_pct": "test/loss_change_pct",
    "kl": "test/kl_teacher_hybrid", "logits_rel_err": "test/logits_rel_err", "mass_recall": "test/mass_recall",
    "recall": "test/recall", "top1_acc": "test/top1_acc",
}


def job_folders(root: Path) -> list[Path]:
    """The job folders of a sweep: those Hydra made (they hold ``.hydra/``), in job order."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder of a multirun, e.g. outputs/multirun/<timestamp>")
    jobs = [p for p in root.iterdir() if p.is_dir() and (p / ".hydra" / "config.yaml").is_file()]
    if not jobs:
        raise UserError(
            f"{root} holds no job folders (sub-folders with .hydra/config.yaml): give the folder a multirun made, "
            "e.g. `python -m src.train -m +experiment=scaling_grid` prints it at the end"
        )
    return sorted(jobs, key=job_number)


def job_config(job: Path) -> dict:
    """The job's composed config, resolved (the pipeline's own copy when it finished, else Hydra's)."""
    metrics = read_json(job / "metrics.json")
    if metrics and isinstance(metrics.get("config"), dict):
        return metrics["config"]
    register_resolvers()
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that cannot resolve here: keep what can be read
        return OmegaConf.to_container(cfg, resolve=False)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_status(job: Path) -> tuple[dict, dict | None]:
    """A job's ``status`` (ok, failed, unfinished) and ``error`` columns, and its metrics.json when it finished."""
    metrics, error = read_json(job / "metrics.json"), read_json(job / "error.json")
    if error:
        return {"status": "failed", "error": str(error.get("error") or "").splitlines()[0] if error.get("error")
                else ""}, None
    if not metrics:
        return {"status": "unfinished", "error": "no metrics.json: the job was stopped or is still running"}, None
    if "evaluate" not in metrics:
        return {"status": "not a pipeline", "error": f"a finished {metrics.get('stage', 'other')} run: no hybrid to "
                                                     "compare"}, None
    return {"status": "ok"}, metrics


def job_row(job: Path) -> dict:
    cfg = job_config(job)
    m = cfg.get("model", {})
    row: dict = {
        "job": job.name, "model": m.get("name"), "d_model": m.get("d_model"), "n_head": m.get("n_head"),
        "n_layer": m.get("n_layer"), "seq_len": m.get("seq_len"), "top_k": cfg.get("hybrid", {}).get("top_k"),
        "selector": cfg.get("selector", {}).get("name"), "approximator": cfg.get("approximator", {}).get("name"),
    }
    row.update(flops_columns(cfg))
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
    rows = [job_row(job) for job in job_folders(root)]
    if rows and all(r["status"] in ("not a pipeline", "unfinished", "failed") for r in rows) and any(
            r["status"] == "not a pipeline" for r in rows):
        raise UserError(f"{root} holds no pipeline job (hybrid against teacher): `analyze sweep` compares hybrids; "
                        f"each job's results are in its metrics.json, and TensorBoard compares them: tensorboard "
                        f"--logdir {root}")
    return rows


# --------------------------------------------------------------------------------------------------------------
# output


def fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def markdown(rows: list[dict], root: Path) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        f"# Sweep {root}",
        "",
        f"{len(rows)} jobs: {len(ok)} finished, {len(rows) - len(ok)} failed or unfinished.",
        "Quality on the test split against each job's own teacher; FLOPs: full accounting (src/costs.py: every head, "
        "causal, selector included; forward of one sequence); measured: one attention layer's forward, median ms, "
        "SDPA vs the sparse variant, on the job's device (src/bench.py).",
        "",
        markdown_table(
            ["job", "model", "d / heads / T", "k", "pair", "loss change", "KL", "mass recall", "logits rel. err",
             "attn FLOPs speed-up", "model FLOPs speed-up", "SDPA ms", "sparse ms", "measured speed-up"],
            [[r["job"], r["model"], f"{r['d_model']} / {r['n_head']} / {r['seq_len']}", r["top_k"],
              f"{r['selector']}+{r['approximator']}",
              f"{r['loss_change_pct']:+.2f}%" if r["loss_change_pct"] is not None else "–", fmt(r["kl"]),
              fmt(r["mass_recall"]), fmt(r["logits_rel_err"]), f"{fmt(r['attn_flops_speedup'], 3)}×",
              f"{fmt(r['model_flops_speedup'], 3)}×", fmt(r["sdpa_ms"], 3), fmt(r["sparse_ms"], 3),
              fmt(r["measured_speedup"], 3) + "×" if r["measured_speedup"] else "–"] for r in ok],
            "lllrlrrrrrrrrr"),
    ]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "## Failed or unfinished jobs", ""]
        lines += [f"- {r['job']} ({r['status']}): {r['error']}" for r in bad]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Speed-ups, loss change and mass recall of the finished jobs against T (src/plots.py, as the notebook)."""
    from src.plots import save, sweep_figure

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
