"""Every figure in one place: the teacher's attention beside the keys a selector picked (TensorBoard, the notebook),
training curves, and the benchmark's, sweep's and cost model's line panels -- drawn from rows (dicts), so that a tool
writing its PNG and the notebook showing a run folder draw the same figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SPEEDUPS = ("flops_speedup", "attn_flops_speedup", "model_flops_speedup", "measured_speedup")  # sweep columns


def attention_figure(probs: torch.Tensor, chosen: torch.Tensor, title: str):
    """probs (T, T) teacher attention of one head, chosen (T, T) bool selection -> a two-panel figure."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    axes[0].imshow(probs.float().cpu().numpy(), cmap="viridis", interpolation="nearest")
    axes[0].set_title("teacher attention")
    overlay = probs.float().cpu().clone()
    axes[1].imshow(overlay.numpy(), cmap="Greys", interpolation="nearest", alpha=0.6)
    ys, xs = torch.nonzero(chosen.cpu(), as_tuple=True)
    axes[1].scatter(xs.numpy(), ys.numpy(), s=4, c="tab:red", marker="s", linewidths=0)
    axes[1].set_title("selected keys (red) over it")
    for ax in axes:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.suptitle(title, fontsize=9, wrap=True)
    return fig


def column(rows: list[dict], *names: str) -> str | None:
    """The first of ``names`` that some row has a number in."""
    return next((n for n in names if any(isinstance(r.get(n), (int, float)) for r in rows)), None)


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


def save(fig: Figure | None, path) -> None:
    """Write a figure as PNG (nothing to draw: an empty figure saying so, so that the file always exists)."""
    if fig is None:
        fig = Figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "nothing measured to plot", ha="center", va="center")
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends below the axes included


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    if hasattr(fig, "number"):  # a pyplot figure (from this module): free it
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def _lines(ax, rows: list[dict], x: str, y: str, by: tuple[str, ...], style: str = "o-", label: str = "") -> bool:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)):
            groups.setdefault(" @ ".join(str(r.get(b)) for b in by if r.get(b) not in (None, "", "–")), []).append(r)
    colors = __import__("matplotlib").colormaps["tab20" if len(groups) > 10 else "tab10"]
    for i, (g, rs) in enumerate(sorted(groups.items())):
        rs.sort(key=lambda r: r[x])
        ax.plot([r[x] for r in rs], [r[y] for r in rs], style, ms=4, color=colors(i % colors.N),
                label=" ".join(p for p in (label, g) if p))
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
        present = [y for y in ys if column(rows, y)]  # ys lists a column's names across versions, or several columns
        for y, style in zip(present, ("o-", "s--", "^:", "d-.")):
            drawn |= _lines(ax, rows, x, y, by, style, y if len(present) > 1 else "")
        if drawn:
            ax.set(xscale="linear" if x == "job" else "log", yscale="log" if logy else "linear", xlabel=x,
                   ylabel=ylabel)
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
    fig.suptitle(title, fontsize=9, wrap=True)
    return fig


def sweep_figure(rows: list[dict], title: str | None = None) -> Figure | None:
    """Speed-ups, loss change and mass recall of a sweep's finished jobs against what the sweep varied: T, else the
    width, else the keys each query read (k); when none of them varied, one point per job, labelled with the
    settings it ran with (the ``swept`` column)."""
    ok = [r for r in rows if r.get("status") in (None, "ok")]
    x = next((c for c in ("seq_len", "d_model", "k") if len({r.get(c) for r in ok} - {None, ""}) > 1), None)
    by = ("selector", "approximator")
    if x is None:
        x, by = "job", ("swept", "selector", "approximator")
        ok = [{**r, "job": i} for i, r in enumerate(ok)]
    return _grid_figure([
        ("speed-up over dense (×)", _panel(ok, x, SPEEDUPS, by, "×", one=True)),
        ("loss change vs teacher", _panel(ok, x, ("loss_change_pct",), by, "%", logy=False)),
        ("attention-mass recall", _panel(ok, x, ("mass_recall",), by, "recall", logy=False)),
    ], title or f"sweep: {len(ok)} of {len(rows)} jobs finished")


def bench_figure(rows: list[dict], title: str = "benchmark (src/bench/layer.py)") -> Figure | None:
    """bench.csv (src/bench/layer.py): time, speed-up and peak memory against T (or seq_len), one line per variant."""
    x = column(rows, "T", "seq_len")
    if x is None:
        return None
    budgets = {r.get("budget") for r in rows} - {None, "", "–"}
    by = ("variant", "budget") if len(budgets) > 1 else ("variant",)
    return _grid_figure([
        ("forward time", _panel(rows, x, ("median_ms", "ms"), by, "median ms")),
        ("speed-up over SDPA", _panel(rows, x, ("speedup",), by, "×", one=True)),
        ("peak memory", _panel(rows, x, ("peak_mb", "peak_memory_mb"), by, "MB")),
    ], title)


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


def budget_figure(ok: list[dict]) -> Figure:
    """A budget curve (src/analysis/budget_curve.py): loss change, attention-mass recall and whole-model speed-up
    against the density each line used, one line per selector (dashed: block level; stars: the dynamic budget), a row
    per corpus."""
    import matplotlib

    datas = list(dict.fromkeys(r["data"] for r in ok)) or ["–"]
    fig = Figure(figsize=(17, 4.6 * len(datas)), layout="tight")
    axes = fig.subplots(len(datas), 3, squeeze=False)
    selectors = list(dict.fromkeys(r["selector"] for r in ok))
    colors = dict(zip(selectors, matplotlib.colormaps["tab10"].colors))
    panels = (("loss_change_pct", "test loss change vs teacher (%)", "symlog"),
              ("mass_recall", "teacher's attention mass on the kept keys", "linear"),
              ("speedup", "whole-model forward speed-up over the teacher (×)", "linear"))
    for row_axes, data in zip(axes, datas):
        group = [r for r in ok if r["data"] == data]
        for ax, (key, label, scale) in zip(row_axes, panels):
            for sel in selectors:
                fixed = sorted((r for r in group if r["selector"] == sel and r["mass"] is None and r[key] is not None),
                               key=lambda r: r["density"] or 0)
                dynamic = [r for r in group if r["selector"] == sel and r["mass"] is not None and r[key] is not None]
                style = "--" if sel.startswith("block") else "-"
                if fixed:
                    ax.plot([r["density"] for r in fixed], [r[key] for r in fixed], style, marker="o",
                            color=colors[sel], label=sel)
                for r in dynamic:
                    ax.plot([r["density"]], [r[key]], marker="*", markersize=13, color=colors[sel], linestyle="none",
                            label=f"{sel}, mass {r['mass']:.2f}")
            if key == "speedup":
                ax.axhline(1.0, color="k", lw=1)
            ax.set_xscale("log", base=2)
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=1.0)
            ax.set(xlabel="density: keys read per query / T", ylabel=label, title=f"{label}\ndata={data}")
            ax.grid(True, alpha=0.3)
        row_axes[0].legend(fontsize=7, ncol=2)
    return fig


def decode_figure(rows: list[dict], label: str) -> Figure:
    """The decode benchmark (src/bench/decode.py): one layer's speed-up over SDPA against L beside its FLOP limit;
    the whole model's tokens per second, dense and block-sparse."""
    fig = Figure(figsize=(13, 5.5), layout="tight")
    left, right = fig.subplots(1, 2)
    for i, variant in enumerate(("block, per token", "block, scoring step")):
        rs = [r for r in rows if r["kind"] == "layer" and r["variant"] == variant]
        if rs:
            left.plot([r["L"] for r in rs], [r["speedup"] for r in rs], marker="o", color=f"C{i}", label=variant)
            left.plot([r["L"] for r in rs], [r["flop_limit"] for r in rs], ":", color=f"C{i}",
                      label=f"{variant}: FLOP limit")
    left.axhline(1.0, color="k", lw=1)
    left.set(xscale="log", yscale="log", xlabel="cache length L", ylabel="speed-up over SDPA",
             title="One attention layer, one decode step")
    models = [r for r in rows if r["kind"] == "model"]
    lens = sorted({r["L"] for r in models})
    for i, variant in enumerate(("sdpa", "block, per token")):
        rs = sorted((r for r in models if r["variant"] == variant), key=lambda r: r["L"])
        right.bar([j + (i - 0.5) * 0.4 for j in range(len(rs))], [r["tokens_per_s"] for r in rs], width=0.4,
                  color=f"C{i + 2}", label="dense (SDPA)" if variant == "sdpa" else "block-sparse")
    right.set_xticks(range(len(lens)), [f"L={L}" for L in lens])
    right.set(ylabel="tokens per second (batch 1)", title="Whole model, one token per step")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(label, fontsize=9)
    return fig


def training_figure(rows: list[dict], label: str) -> Figure:
    """The training benchmark (src/bench/training.py): tokens per second of one training step against T, dense and
    natively sparse; each sparse model's speed-up over the dense step beside its FLOP limit."""
    fig = Figure(figsize=(13, 5.5), layout="tight")
    left, right = fig.subplots(1, 2)
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        rs = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["T"])
        left.plot([r["T"] for r in rs], [r["tokens_per_s"] for r in rs], marker="o", color=f"C{i}", label=variant)
        if variant != "dense":
            right.plot([r["T"] for r in rs], [r["speedup"] for r in rs], marker="o", color=f"C{i}", label=variant)
            right.plot([r["T"] for r in rs], [r["flop_limit"] for r in rs], ":", color=f"C{i}",
                       label=f"{variant}: FLOP limit")
    right.axhline(1.0, color="k", lw=1)
    left.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="training tokens per second",
             title="One training step (forward, backward, AdamW)")
    right.set(xscale="log", xlabel="sequence length T", ylabel="speed-up over the dense step",
              title="Natively sparse over dense")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(label, fontsize=9)
    return fig


def teacher_figure(rows: list[dict], label: str) -> Figure:
    """The teacher benchmark (src/bench/teacher.py): each run's validation loss against the step (its own periodic
    estimate), and its training tokens per second."""
    fig = Figure(figsize=(13, 5), layout="tight")
    left, right = fig.subplots(1, 2)
    names = [f"{r['run']}, {r['precision']}" for r in rows]
    for i, (r, name) in enumerate(zip(rows, names)):
        steps, losses = zip(*r["curve"]) if r["curve"] else ((), ())
        left.plot(steps, losses, marker="o", color=f"C{i}", label=name)
    right.barh(range(len(rows)), [r["tokens_per_s"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    right.set_yticks(range(len(rows)), names)
    right.invert_yaxis()
    left.set(xlabel="step", ylabel="validation loss (nats per character, 20 batches)", title="Validation loss")
    right.set(xlabel="training tokens per second (validation excluded)", title="Speed")
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.suptitle(label, fontsize=9)
    return fig


def compute_scaling_figure(d: dict) -> Figure:
    """The cost model's scaling (python -m src.analyze costs; ``analyze.compute_scaling_series`` makes ``d``): cost per
    layer across the model grid, prototype accounting (dashed) against the full one (solid); attention speed-up
    against T at one width, each pair's crossover starred."""
    import matplotlib

    fig = Figure(figsize=(15, 8), layout="tight")
    left, right = fig.subplots(1, 2)
    colors = dict(zip(d["pairs"], matplotlib.colormaps["tab10"].colors[1:]))
    x = [g[0] for g in d["grid"]]
    left.plot(x, d["proto_dense"], "k--", marker="s", ms=10, mfc="none",
              label="dense — prototype accounting: all heads, no causal mask (MACs)")
    left.plot(x, d["proto_sparse"], "--", color=colors["mlp+mlp"], marker="s",
              label="mlp+mlp, k=8, h=128 — prototype accounting: one head (MACs)")
    left.plot(x, d["dense"], "k-", marker="o", lw=2, label="dense SDPA — full accounting: all heads, causal (FLOPs)")
    for p, ys in d["sparse"].items():
        left.plot(x, ys, "-", color=colors[p], marker="o", label=f"{p} — full accounting: all heads, causal (FLOPs)")
    left.plot(x, d["rest"], ":", color="grey", lw=2, label="projections + MLP, unchanged — full accounting (FLOPs)")
    left.set(xscale="log", yscale="log", xlabel="model size (d_model / T)", ylabel="per layer, one sequence",
             title="Cost per layer vs model size\nprototype accounting (dashed) vs full accounting (solid)")
    left.set_xticks(x, [f"{dm}d/{T}" for dm, T in d["grid"]], rotation=30)
    left.minorticks_off()
    left.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.24))

    Ts, (width, heads), k = d["seq_lens"], d["width"], d["k"]
    right.plot(Ts, d["proto_speedup"], "--", color=colors["mlp+mlp"], marker="s",
               label="mlp+mlp, k=8, h=128 — prototype accounting (one head)")
    for p, ups in d["speedup"].items():
        cross = d["crossover"][p]
        right.plot(Ts, ups, "-", color=colors[p], marker="o",
                   label=f"{p} — full accounting (crossover T: {d['crossover_text'][p]})")
        if cross in Ts:
            up = ups[Ts.index(cross)]
            right.plot([cross], [up], marker="*", ms=18, color=colors[p], mec="k", zorder=5)
            right.annotate(f"T={cross:,}", (cross, up), textcoords="offset points", xytext=(6, -14), fontsize=8)
    right.axhline(1.0, color="k", lw=1)
    right.text(Ts[-1], 0.92, "1× = dense", fontsize=8, ha="right", va="top")
    right.set(xscale="log", yscale="log", xlabel="sequence length T",
              ylabel="attention-core speed-up over dense (FLOPs ratio)",
              title=f"Attention speed-up vs T at d_model={width}, {heads} heads\n"
                    f"full accounting: all heads, causal, k = {'T/8' if k is None else k} (★ = crossover)")
    right.set_xticks(Ts, [f"{T:,}" for T in Ts], rotation=30)
    right.minorticks_off()
    right.grid(True, which="major", alpha=0.3)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.24))
    return fig


def recall_figure(rows: list[dict], tasks: list[str], depths: list[str], title: str = "") -> Figure | None:
    """Needle in a haystack (src/analysis/recall.py): per task a row of heatmaps, one per model (the teacher, each
    hybrid: selector and budget), of the share of answers recalled exactly -- colour, and written in each cell -- per
    needle depth (rows: ``{task}_d{depth}`` of each row) and context length (columns: ``seq_len``). Models that do
    not fit a row of about 17 inches wrap onto further rows; None when nothing was measured."""
    import matplotlib
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    panels = list(dict.fromkeys(r["panel"] for r in rows))
    if not (panels and tasks and depths):
        return None
    lengths = sorted({r["seq_len"] for r in rows}, key=lambda T: (T is None, T or 0))
    width = 0.6 * len(lengths) + 0.9  # inches per panel
    wraps = math.ceil(len(panels) / max(1, int(17 // width)))
    ncols = math.ceil(len(panels) / wraps)  # the rows of a task as even as they go
    fig = Figure(figsize=(width * ncols + 1.6, (0.3 * len(depths) + 1.0) * len(tasks) * wraps + 0.6),
                 layout="constrained")
    axes = fig.subplots(len(tasks) * wraps, ncols, squeeze=False)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.85")
    measured = {(r["panel"], r["seq_len"]): r for r in rows}
    image = None
    for t, task in enumerate(tasks):
        for p, panel in enumerate(panels):
            ax = axes[t * wraps + p // ncols, p % ncols]
            grid = np.array([[measured.get((panel, T), {}).get(f"{task}_d{d}") for T in lengths] for d in depths],
                            dtype=float)  # None: nan, drawn grey
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, "–" if np.isnan(v) else f"{100 * v:.0f}%", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), [str(T) for T in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), depths if p % ncols == 0 else [], fontsize=7)
            ax.tick_params(length=0)
            ax.set_title(panel, fontsize=8)
            if p % ncols == 0:
                ax.set_ylabel(f"{task}\nneedle depth", fontsize=8)
        for p in range(len(panels), ncols * wraps):
            axes[t * wraps + p // ncols, p % ncols].set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="answers recalled exactly", format=PercentFormatter(1.0))
    fig.supxlabel("context length T (model.seq_len)", fontsize=9)
    fig.suptitle(title or "Recall episodes: the share of answers recalled exactly, per needle depth", fontsize=10)
    return fig
