"""What notebooks/explore.ipynb shows, as small functions: find a run, read its TensorBoard scalars, metrics and
results, draw its curves and the teacher's attention beside the selected keys, and plot a sweep's, a benchmark's
and the cost model's CSVs. Every reader is lenient: a missing file, tag or column means "nothing to show", never an
error. Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot backend involved); ``png`` renders one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from matplotlib.figure import Figure

STAGES = ("teacher", "selector", "approximator", "evaluate")
RUN_MARKERS = ("metrics.json", "error.json", ".hydra", "tensorboard", "sweep.csv", "multirun.yaml", "bench.csv",
               "costs_full.csv")
SPEEDUPS = ("flops_speedup", "attn_flops_speedup", "model_flops_speedup", "measured_speedup")


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
    from src.runs import job_number

    if not folder.is_dir():
        return []
    markers = (".hydra", "metrics.json", "error.json")
    return sorted((p for p in folder.iterdir() if p.is_dir() and any((p / m).exists() for m in markers)),
                  key=job_number)


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


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


THROUGHPUT = ("time", "batches", "samples", "lengths")  # Lightning's ThroughputMonitor's running totals: no curves


def curve_groups(tags) -> dict[str, list[str]]:
    """train/ and val/ tags (means only, not per head) grouped by metric: 'loss' -> [train/loss, val/loss]."""
    groups: dict[str, list[str]] = {}
    for t in sorted(tags):
        parts = t.split("/")
        if len(parts) == 2 and parts[0] in ("train", "val") and parts[1] not in THROUGHPUT:
            groups.setdefault(parts[1], []).append(t)
    return groups


def curves_figure(stage: str, data: dict[str, tuple[list[int], list[float]]], ncols: int = 3) -> Figure | None:
    groups = curve_groups(data)
    if not groups:
        return None
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * min(ncols, len(groups)), 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, min(ncols, len(groups)), squeeze=False).ravel()
    for ax, (name, tags) in zip(axes, groups.items()):
        for t in tags:
            steps, values = data[t]
            ax.plot(steps, values, "o-" if len(steps) < 20 else "-", ms=3, label=t)
        ax.set(title=name, xlabel="step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"{stage}: training curves")
    return fig


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    if hasattr(fig, "number"):  # a pyplot figure (src/plots.py): free it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


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
            from src.sweep import job_config

            return job_config(folder)
    return None


def own_checkpoint(folder: Path) -> str | None:
    from src.checkpoints import run_checkpoints

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
    from src.stages.evaluate import load_hybrid
    from src.stages.hybrid_module import datamodule_for

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
    module, source = load_hybrid(cfg)
    module.eval()
    dm = datamodule_for(cfg, module.vocab, source)
    dm.setup("test")
    windows = dm.test_dataloader().dataset
    x = windows[min(sample, len(windows) - 1)][0][None]
    pairs = module.spec.pairs()
    layer = pairs[0][0] if layer is None else layer
    head = pairs[0][1] if head is None else head
    if (layer, head) not in pairs:
        raise ValueError(f"layer {layer} head {head} is not sparse in this hybrid; sparse: {pairs}")
    with torch.no_grad():
        _, signals = module.teacher_signals(x)
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
    from src.report import markdown_table

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


def column(rows: list[dict], *names: str) -> str | None:
    """The first of ``names`` that some row has a number in."""
    return next((n for n in names if any(isinstance(r.get(n), (int, float)) for r in rows)), None)


# ------------------------------------------------------------------------------------------ sweeps, bench, costs


def sweep_rows(folder: Path) -> list[dict]:
    """sweep.csv, or (not written yet) the same rows gathered from the job folders by src/sweep.py."""
    if (folder / "sweep.csv").is_file():
        return read_csv(folder / "sweep.csv")
    try:
        from src import sweep

        return sweep.gather(folder)
    except Exception:  # noqa: BLE001  an older project without src/sweep.py, or no job folders
        return []


def _lines(ax, rows: list[dict], x: str, y: str, by: tuple[str, ...], style: str = "o-", label: str = "") -> bool:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)):
            groups.setdefault("+".join(str(r.get(b)) for b in by if r.get(b) is not None), []).append(r)
    for g, rs in sorted(groups.items()):
        rs.sort(key=lambda r: r[x])
        ax.plot([r[x] for r in rs], [r[y] for r in rs], style, ms=4, label=" ".join(p for p in (label, g) if p))
    return bool(groups)


def _readable_ticks(ax) -> None:
    """Log axes with plain numbers: x ticks at the data's values (a few sizes), y labelled 0.5, 1, 20."""
    from matplotlib.ticker import LogFormatter, NullLocator

    if ax.get_xscale() == "log":
        xs = sorted({float(x) for line in ax.get_lines() if not line.get_label().startswith("_")
                     for x in line.get_xdata()})
        if 0 < len(xs) <= 16:
            ax.set_xticks(xs, [f"{x:g}" for x in xs], rotation=45 if len(xs) > 4 else 0)
            ax.xaxis.set_minor_locator(NullLocator())
    if ax.get_yscale() == "log":
        class Plain(LogFormatter):  # LogFormatter picks which ticks to label; print them as 0.5, not 5e-01
            def _num_to_string(self, x, vmin, vmax):
                return f"{x:g}"

        ax.yaxis.set_major_formatter(Plain())
        ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _panel(rows: list[dict], x: str, ys: tuple[str, ...], by: tuple[str, ...], ylabel: str, logy: bool = True,
           one: bool = False):
    """A draw(ax) -> bool for _grid_figure: each y column against x (log), one line per group of ``by``."""
    def draw(ax) -> bool:
        drawn = False
        for y, style in zip(ys, ("o-", "s--", "^:", "d-.")):
            drawn |= _lines(ax, rows, x, y, by, style, y if len(ys) > 1 else "")
        if drawn:
            ax.set(xscale="log", yscale="log" if logy else "linear", xlabel=x, ylabel=ylabel)
            if one:
                ax.axhline(1.0, color="k", lw=1)
        return drawn

    return draw


def _grid_figure(panels: list, title: str) -> Figure | None:
    """panels: (title, draw(ax) -> bool) side by side; the ones that draw nothing are left out; None if all are."""
    fig = Figure(figsize=(4.6 * max(1, len(panels)), 3.8), layout="constrained")
    used = 0
    for i, (name, draw) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if draw(ax):
            used += 1
            _readable_ticks(ax)
            ax.set_title(name)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        else:
            fig.delaxes(ax)
    if not used:
        return None
    fig.suptitle(title)
    return fig


def sweep_figure(rows: list[dict]) -> Figure | None:
    """Speed-ups, loss change and mass recall of a sweep's finished jobs against seq_len (or d_model)."""
    ok = [r for r in rows if r.get("status") in (None, "ok")]
    x = "seq_len" if len({r.get("seq_len") for r in ok}) > 1 or not column(ok, "d_model") else "d_model"
    by = ("selector", "approximator")
    return _grid_figure([
        ("speed-up over dense (×)", _panel(ok, x, SPEEDUPS, by, "×", one=True)),
        ("loss change vs teacher", _panel(ok, x, ("loss_change_pct",), by, "%", logy=False)),
        ("attention-mass recall", _panel(ok, x, ("mass_recall",), by, "recall", logy=False)),
    ], f"sweep: {len(ok)} of {len(rows)} jobs finished")


def failed_jobs(rows: list[dict]) -> list[str]:
    return [f"{r.get('job')} ({r.get('status')}): {r.get('error') or ''}" for r in rows
            if r.get("status") not in (None, "ok")]


def bench_figure(rows: list[dict]) -> Figure | None:
    """bench.csv (src/bench.py): time, speed-up and peak memory against T (or seq_len), one line per variant."""
    x = column(rows, "T", "seq_len")
    if x is None:
        return None
    by = ("variant", "budget") if column(rows, "budget") else ("variant",)
    return _grid_figure([
        ("forward time", _panel(rows, x, ("median_ms", "ms"), by, "median ms")),
        ("speed-up over SDPA", _panel(rows, x, ("speedup",), by, "×", one=True)),
        ("peak memory", _panel(rows, x, ("peak_mb", "peak_memory_mb"), by, "MB")),
    ], "benchmark (src/bench.py)")


def costs_figure(full: list[dict], prototype: list[dict] | None = None) -> Figure | None:
    """costs_full.csv (with costs_prototype.csv's line): FLOPs speed-up of each pair across the model grid."""
    x = "d_model" if column(full, "d_model") else "seq_len"
    proto = [{x: r.get(x), "attn_speedup": r.get("speedup"), "pair": "prototype accounting (one head)"}
             for r in prototype or []]
    unit = "× over dense (FLOPs)"
    return _grid_figure([
        ("attention speed-up", _panel(full + proto, x, ("attn_speedup",), ("pair",), unit, one=True)),
        ("whole-model speed-up", _panel(full, x, ("model_speedup",), ("pair",), unit, one=True)),
    ], "analytic cost model (python -m src.analyze costs)")
