"""``python -m src.analyze sweep`` (src/analysis/sweep.py) over a multirun of tiny pipelines: one row per job with
the settings the sweep varied, keys per query, quality, FLOPs, measured speed; failed jobs listed; the figure."""

from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.analysis import sweep
from src.analyze import main as analyze
from src.costs import accounting as costs
from src.errors import UserError
from src.report.figures import sweep_figure
from tests.conftest import TINY, multirun, run_cli


@pytest.fixture(scope="module")
def budget_sweep(tmp_path_factory, teacher_ckpt):
    """A multirun over hybrid.budget=4,16 (indexer + softmax, every head, the layer timed) and a job refused in one
    line (top_k=999 > T), made in this process from the session's teacher."""
    root = tmp_path_factory.mktemp("budget_sweep") / "multirun"
    common = ["+experiment=scaling_grid", "model=tiny", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
              "pipeline.bench_repeats=1", "model.n_layer=2", "model.seq_len=32", "trainer.limit_val_batches=2"]
    multirun(root, [["hybrid.budget=4"], ["hybrid.budget=16"], ["hybrid.top_k=999"]], common)
    return root


def test_rows_say_what_each_job_varied_and_read(budget_sweep, capsys):
    assert analyze(["sweep", str(budget_sweep)]) == 0
    rows = list(csv.DictReader((budget_sweep / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert [r["k"] for r in rows[:2]] == ["4", "16"]  # keys per query: the budget, not the unused top_k
    assert [r["swept"] for r in rows] == ["hybrid.budget=4 hybrid.top_k=–", "hybrid.budget=16 hybrid.top_k=–",
                                          "hybrid.budget=– hybrid.top_k=999"]
    assert "larger than the sequence length" in rows[2]["error"]
    size = costs.ModelSize("tiny", 128, 2, 32)
    for row, k in zip(rows, (4, 16)):
        expected = costs.pair_cost(size, "indexer+softmax", n_layer=2, k=k)
        assert float(row["model_flops_speedup"]) == pytest.approx(expected.model_speedup)
        assert float(row["attn_flops_speedup"]) == pytest.approx(expected.attn_speedup)
        assert float(row["measured_speedup"]) > 0 and float(row["sdpa_ms"]) > 0
        assert -100 < float(row["loss_change_pct"]) < 1000 and 0 <= float(row["mass_recall"]) <= 1 + 1e-6
    speed = json.loads((budget_sweep / "0_tiny" / "metrics.json").read_text())["speed"]
    assert speed["kernel"] == "masked" and speed["layer"] == 0  # the trained hybrid's own layer was timed
    printed = capsys.readouterr().out
    assert "| 0_tiny | hybrid.budget=4 hybrid.top_k=– | tiny | 128 / 2 / 32 | 4 |" in printed
    assert "- 2_tiny (failed): hybrid.top_k=999" in printed
    for name in ("sweep.csv", "sweep.json", "sweep.md", "sweep.png"):
        assert (budget_sweep / name).is_file()


def test_the_figure_tells_the_jobs_apart(budget_sweep):
    """Size and T are the same in every job: the panels draw against the keys each query read, so the two jobs are
    two points of one line, not one point drawn twice."""
    fig = sweep_figure(sweep.gather(budget_sweep))
    lines = [line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert lines and all(sorted(line.get_xdata()) == [4, 16] for line in lines)
    assert {ax.get_xlabel() for ax in fig.axes} == {"k"}


def test_pipeline_jobs_log_hparams(budget_sweep):
    acc = EventAccumulator(str(budget_sweep / "0_tiny" / "tensorboard")).Reload()
    session = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in session and b"hybrid.budget" in session["_hparams_/session_start_info"]
    assert {"hparams/hybrid_loss", "hparams/attn_flops_speedup", "hparams/model_flops_speedup"} <= set(
        acc.Tags()["scalars"])


def test_not_a_sweep_folder(tmp_path):
    with pytest.raises(UserError, match="no job folders"):
        sweep.gather(tmp_path)
    with pytest.raises(UserError, match="is not a folder"):
        sweep.gather(tmp_path / "missing")


@pytest.mark.slow
def test_the_command_line_multirun(tmp_path):
    """The real thing: ``-m +experiment=scaling_grid`` at one tiny size, top_k 4 (fine) and 999 (> seq_len: the job
    fails), then ``analyze sweep``, each in a process of its own."""
    overrides = [o for o in TINY if not o.startswith("model=")]
    proc = run_cli("src.train", "-m", "+experiment=scaling_grid", "hydra.sweeper.params.model=tiny",
                   "hybrid.top_k=4,999", "selector.max_steps=2", "pipeline.bench_repeats=1", *overrides,
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job failed: the sweep says so in its status
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0_tiny", "1_tiny"]
    assert "top_k=999" in json.loads((tmp_path / "1_tiny" / "error.json").read_text())["error"]
    assert "2 jobs, 1 finished, 1 failed" in proc.stdout
    assert f"gather the results: python -m src.analyze sweep {tmp_path}" in proc.stdout
    proc = run_cli("src.analyze", "sweep", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["status"], r["k"], r["swept"]) for r in rows][0] == ("ok", "4", "hybrid.top_k=4")
    proc = run_cli("src.analyze", "sweep", str(tmp_path / "missing"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
