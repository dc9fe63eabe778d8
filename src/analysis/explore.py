"""What notebooks/explore.ipynb shows, as small functions: find a run, read its TensorBoard scalars, metrics and
results, reload a hybrid for its attention picture, and read a sweep's, a benchmark's and the cost model's CSVs --
glue: the figures are src/report/figures.py's. Every reader is lenient: a missing file, tag or column means "nothing to
show", never an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

# the figures the notebook shows are drawn by src/report/figures.py, as the tools' own PNGs
from src.report.figures import (attention_figure, bench_figure, column, costs_figure, curve_groups,  # noqa: F401
                                curves_figure, png, sweep_figure)
from src.runs.checkpoints import run_checkpoints
from src.runs.folders import job_folders
from src.runs.records import read_json

STAGES = ("teacher", "selector", "approximator", "evaluate")
RUN_MARKERS = ("metrics.json", "error.json", ".hydra", "tensorboard", "sweep.csv", "multirun.yaml", "bench.csv",
               "costs_full.csv")


# ---------------------------------------------------------------------------------------------------- folders


def is_run(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)


def runs_under(root: Path, depth: int = 4) -> list[Path]:
    """The top-level run folders under root (a pipeline run's stages and a sweep's jobs are not listed)."""
    found: list[Path] = []

    def walk(p: Path, d: int) -> None:
        for c in sorted(p.iterdir()) if p.is_dir() else []:
            if c.is_dir() and not c.name.startswith("."):
                if is_run(c):
                    found.append(c)
                elif d > 1:
                    walk(c, d - 1)

    walk(root, depth)
    return found


def newest_run(root: Path = Path("outputs")) -> Path | None:
    runs = runs_under(root)
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def sweep_jobs(folder: Path) -> list[Path]:
    return job_folders(folder)


def folder_kind(folder: Path) -> str:
    """'sweep', 'pipeline', 'stage' (one stage's run folder) or 'other' (e.g. a folder of benchmark CSVs)."""
    if (folder / "sweep.csv").is_file() or (folder / "multirun.yaml").is_file():
        return "sweep"
    if any((folder / s).is_dir() for s in STAGES):
        return "pipeline"
    if any((folder / m).exists() for m in ("tensorboard", "metrics.json", "error.json", ".hydra")):
        return "stage"
    return "sweep" if sweep_jobs(folder) else "other"


def stage_folders(run: Path) -> list[tuple[str, Path]]:
    """(stage name, folder) of each stage a run holds: a pipeline's sub-folders, or the run itself."""
    parts = [(s, run / s) for s in STAGES if (run / s).is_dir()]
    if parts:
        return parts
    stage = (read_json(run / "metrics.json") or {}).get("stage", run.name)
    return [(stage, run)]


# ---------------------------------------------------------------------------------------------------- TensorBoard


def _accumulator(tb_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 4}).Reload()


def scalars(tb_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) of every scalar in a tensorboard/ folder (all its event files); {} when none."""
    if not Path(tb_dir).is_dir():
        return {}
    acc = _accumulator(tb_dir)
    return {t: ([e.step for e in acc.Scalars(t)], [e.value for e in acc.Scalars(t)]) for t in acc.Tags()["scalars"]}


def logged_images(tb_dir: Path) -> dict[str, bytes]:
    """tag -> the last PNG logged under it (e.g. attention/L0H0)."""
    if not Path(tb_dir).is_dir():
        return {}
    acc = _accumulator(tb_dir)
    return {t: acc.Images(t)[-1].encoded_image_string for t in acc.Tags()["images"] if acc.Images(t)}


# ---------------------------------------------------------------------------------------------------- attention


def run_config(run: Path) -> dict | None:
    """The run's resolved config: from evaluate's results.json, a metrics.json, or Hydra's .hydra/config.yaml
    (a pipeline's stage folder: the pipeline's)."""
    for folder in (run, run.parent):
        for f in (folder / "evaluate" / "results.json", folder / "results.json", folder / "metrics.json"):
            cfg = (read_json(f) or {}).get("config")
            if isinstance(cfg, dict):
                return cfg
        if (folder / ".hydra" / "config.yaml").is_file():
            from src.analysis.jobs import job_config

            return job_config(folder)
    return None


def own_checkpoint(folder: Path) -> str | None:
    found = run_checkpoints(folder)
    return str(found[0]) if found else None


def attention_sample(run: Path, layer: int | None = None, head: int | None = None, sample: int = 0):
    """The teacher's attention of one head on one test sequence and the keys the hybrid's selector picks there.

    Loads the hybrid with the evaluation stage's own ``load_hybrid`` (the run's own checkpoints win over the
    paths in its config, so a moved run folder still works). Returns (probs (T, T), chosen (T, T) bool, title).
    """
    import torch
    from omegaconf import OmegaConf

    from src.sparse import Selection, selection_mask
    from src.stages.common import build_datamodule
    from src.stages.evaluate import load_hybrid

    cfg = run_config(run)
    if cfg is None:
        raise ValueError(f"{run}: no config found (results.json, metrics.json or .hydra/config.yaml)")
    cfg = OmegaConf.create(cfg)
    if (read_json(run / "metrics.json") or {}).get("stage", cfg.get("stage")) == "teacher":
        raise ValueError(f"{run} is a teacher's run: it has no selector")
    folder = run / "approximator" if (run / "approximator").is_dir() else run
    if own_checkpoint(folder):  # a distillation stage's checkpoint holds the whole hybrid (teacher included)
        cfg.approximator.ckpt = own_checkpoint(folder)
    if own_checkpoint(run / "teacher"):
        cfg.teacher.ckpt = own_checkpoint(run / "teacher")
    module, _, checkpoint = load_hybrid(cfg)
    module.eval()
    dm = build_datamodule(cfg, checkpoint)
    dm.setup("test")
    windows = dm.test_dataloader().dataset
    x = windows[min(sample, len(windows) - 1)][0][None]
    pairs = module.spec.pairs()
    layer = pairs[0][0] if layer is None else layer
    head = pairs[0][1] if head is None else head
    if (layer, head) not in pairs:
        raise ValueError(f"layer {layer} head {head} is not sparse in this hybrid; sparse: {pairs}")
    with torch.no_grad():
        signals = module.layer_signals(x)
        s = signals[layer]
        sel = module.select(layer, s)
    i = list(module.spec.heads).index(head)
    chosen = selection_mask(Selection(sel.idx[:1, i : i + 1], sel.valid[:1, i : i + 1]), x.size(1))[0, 0]
    title = (f"layer {layer} head {head}, test sequence {sample}: {cfg.selector.name} selector, "
             f"budget {module.spec.budget}")
    return s.probs[0, head], chosen, title


# ---------------------------------------------------------------------------------------------------- numbers


def flat_metrics(metrics: dict, per_head: bool = False) -> dict[str, float]:
    """The numeric entries of a metrics.json (per-head values ``x/y/L0H1`` only when asked)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (per_head or k.count("/") < 2)}


def metrics_markdown(run: Path) -> str:
    """One markdown table per stage: its metrics.json's numbers."""
    from src.report.tables import markdown_table

    out = []
    for stage, folder in stage_folders(run):
        m = flat_metrics(read_json(folder / "metrics.json") or {})
        if m:
            table = markdown_table(["metric", "value"], [[k, f"{v:.6g}"] for k, v in sorted(m.items())], "lr")
            out.append(f"**{stage}** (`{folder / 'metrics.json'}`)\n\n{table}")
    error = read_json(run / "error.json")
    if error:
        out.append(f"**failed**: {error.get('error')}")
    return "\n\n".join(out) or f"no metrics.json under {run}"


def results_text(run: Path) -> str | None:
    for f in (run / "evaluate" / "results.md", run / "results.md"):
        if f.is_file():
            return f.read_text()
    return None


def number(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return text if text not in ("", None) else None
    return int(v) if v.is_integer() and "." not in str(text) and "e" not in str(text).lower() else v


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV with numbers as numbers and empty cells as None; [] when unreadable."""
    try:
        with open(path, newline="") as f:
            return [{k.strip(): number(v) for k, v in r.items() if k} for r in csv.DictReader(f)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def find(folder: Path, name: str, limit: int = 20) -> list[Path]:
    return sorted(Path(folder).rglob(name))[:limit] if Path(folder).is_dir() else []


# ------------------------------------------------------------------------------------------ sweeps, bench, costs


def sweep_rows(folder: Path) -> list[dict]:
    """sweep.csv, or (not written yet) the same rows gathered from the job folders by src/analysis/sweep.py."""
    if (folder / "sweep.csv").is_file():
        return read_csv(folder / "sweep.csv")
    try:
        from src.analysis import sweep

        return sweep.gather(folder)
    except Exception:  # noqa: BLE001  an older project without the sweep analysis, or no job folders
        return []


def failed_jobs(rows: list[dict]) -> list[str]:
    return [f"{r.get('job')} ({r.get('status')}): {r.get('error') or ''}" for r in rows
            if r.get("status") not in (None, "ok")]
