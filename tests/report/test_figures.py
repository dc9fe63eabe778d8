"""Figures (src/report/figures.py)."""

from __future__ import annotations

import torch

from src.report.figures import (
    attention_figure,
    bench_figure,
    curves_figure,
    save,
    sweep_figure,
)


def test_nothing_to_draw_is_none_and_still_a_file(tmp_path):
    assert bench_figure([]) is None and sweep_figure([{"status": "failed"}]) is None
    assert curves_figure("teacher", {"train/device/items_per_sec": ([1], [2.0])}) is None  # throughput: no curve
    save(None, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_bench_rows_one_line_per_variant_and_budget(tmp_path):
    rows = [{"T": T, "variant": v, "budget": b, "median_ms": 1.0 * T, "speedup": s, "peak_mb": 1.0}
            for T in (256, 1024) for v, b, s in (("sdpa", "–", 1.0), ("block+tiles", "512 keys", 2.0),
                                                 ("block+tiles", "T/8", 3.0))]
    fig = bench_figure(rows, "title")
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert {"sdpa", "block+tiles @ 512 keys", "block+tiles @ T/8"} <= labels
    save(fig, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_attention_figure_two_panels():
    probs = torch.tril(torch.ones(8, 8)).softmax(-1)
    fig = attention_figure(probs, torch.eye(8, dtype=torch.bool), "t")
    assert len(fig.axes) == 2
