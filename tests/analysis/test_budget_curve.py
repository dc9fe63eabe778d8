"""``python -m src.analyze budget`` (src/analysis/budget_curve.py) over a tiny budget curve: one made in this process
(the table and the plot), and the command-line multirun (one teacher serves every job)."""

from __future__ import annotations

import csv
import json

import pytest

from src.analysis import budget_curve
from src.analyze import main as analyze
from src.config import resolve_precision
from src.errors import UserError
from tests.conftest import TINY, multirun, run_cli

CURVE = ["+experiment=budget_curve", "hybrid.budget=0.25", "selector.block_size=4", "selector.max_steps=2",
         "evaluate.limit_batches=2", "evaluate.repeats=1"]


@pytest.fixture(scope="module")
def curve(tmp_path_factory, teacher_ckpt):
    """Two lines of the curve at T/4, window and the block selector with the dynamic budget, from the session's
    teacher."""
    root = tmp_path_factory.mktemp("curve") / "multirun"
    multirun(root, [["+curve=window"], ["+curve=block_dynamic"]], [*CURVE, f"teacher.ckpt={teacher_ckpt}"])
    return root


def test_budget_table_and_plot(curve, capsys):
    assert analyze(["budget", str(curve)]) == 0
    printed = capsys.readouterr().out
    assert "| window | token | T/4 (8) |" in printed and "| block | block | T/4 (8) | 0.90 |" in printed
    rows = list(csv.DictReader((curve / "budget.csv").open()))
    assert [r["selector"] for r in rows] == ["block", "window"] and all(r["status"] == "ok" for r in rows)
    window = next(r for r in rows if r["selector"] == "window")
    # window at T/4 = 8 of 32 keys: query i reads min(8, i + 1) keys
    assert float(window["density"]) == pytest.approx(sum(min(8, i + 1) for i in range(32)) / 32 / 32, abs=1e-6)
    assert float(next(r for r in rows if r["selector"] == "block")["speedup"]) > 0
    assert (curve / "budget.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def tiny_curve(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve")
    proc = run_cli("src.train", "-m", "+experiment=budget_curve", *TINY, "+curve=window,block_dynamic",
                   "hybrid.budget=0.25", "selector.block_size=4", "selector.max_steps=2", "evaluate.limit_batches=2",
                   "evaluate.repeats=1", f"hydra.sweep.dir={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


@pytest.mark.slow
def test_one_teacher_serves_every_job(tiny_curve):
    root, proc = tiny_curve
    jobs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
    assert [p.name for p in jobs] == ["0_synthetic", "1_synthetic"], proc.stdout[-2000:]
    first, second = (json.loads((p / "metrics.json").read_text()) for p in jobs)
    assert (jobs[0] / "teacher" / "checkpoints").is_dir() and not (jobs[1] / "teacher").exists()
    assert second["teacher"]["checkpoint"] == first["teacher"]["checkpoint"]
    assert second["selector"]["teacher_ckpt"] == first["teacher"]["checkpoint"]
    assert second["config"]["hybrid"]["mass"] == 0.9 and second["config"]["selector"]["name"] == "block"
    speed = second["evaluate"]["speed"]
    assert speed["teacher_tokens_per_s"] > 0 and "tiles" in speed["kernels"] and speed["tiles_tokens_per_s"] > 0
    device = second["config"]["device"]
    assert speed["precision"] == str(resolve_precision(device["precision"], device["accelerator"])[0])
    assert f"precision {speed['precision']}." in (jobs[1] / "results.md").read_text()
    assert speed["flop_limit"] > 0 and f"FLOP limit: {speed['flop_limit']:.2f}×" in (jobs[1] / "results.md").read_text()


@pytest.mark.slow
def test_the_command_line_analysis(tiny_curve):
    root, _ = tiny_curve
    proc = run_cli("src.analyze", "budget", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "| window | token | T/4 (8) |" in proc.stdout and "| block | block | T/4 (8) | 0.90 |" in proc.stdout


def test_analyze_budget_needs_a_sweep(tmp_path):
    with pytest.raises(UserError, match=r"holds no job folders .*`python -m src.train -m \+experiment=budget_curve`"):
        budget_curve.gather(tmp_path)
