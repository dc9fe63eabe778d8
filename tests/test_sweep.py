"""The scaling-grid sweep: a 2-job tiny multirun with one job made to fail, gathered by `analyze sweep`."""

from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src import costs, sweep
from src.errors import UserError
from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """``-m +experiment=scaling_grid`` at one tiny size, top_k 4 (fine) and 999 (> seq_len: the job fails)."""
    root = tmp_path_factory.mktemp("sweep")
    overrides = [o for o in TINY if not o.startswith("model=")]
    proc = run_cli("src.train", "-m", "+experiment=scaling_grid", "hydra.sweeper.params.model=tiny",
                   "hybrid.top_k=4,999", "selector.max_steps=2", "pipeline.bench_repeats=1", *overrides,
                   f"hydra.sweep.dir={root}")
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job failed: the sweep says so in its status
    return root, proc


def test_failed_job_does_not_stop_the_sweep(tiny_sweep):
    root, proc = tiny_sweep
    jobs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert jobs == ["0_tiny", "1_tiny"]
    assert (root / "0_tiny" / "metrics.json").is_file()
    assert "top_k=999" in json.loads((root / "1_tiny" / "error.json").read_text())["error"]
    assert "2 jobs, 1 finished, 1 failed" in proc.stdout
    assert "python -m src.analyze sweep" in proc.stdout


def test_analyze_sweep_table(tiny_sweep):
    root, _ = tiny_sweep
    proc = run_cli("src.analyze", "sweep", str(root))
    assert proc.returncode == 0, proc.stderr
    for name in ("sweep.csv", "sweep.json", "sweep.md", "sweep.png"):
        assert (root / name).is_file()
    rows = list(csv.DictReader((root / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    ok, failed = rows
    assert "top_k=999" in failed["error"] and "top_k=999" in proc.stdout
    assert ok["top_k"] == "4" and ok["selector"] == "indexer" and ok["approximator"] == "softmax"
    assert float(ok["measured_speedup"]) > 0 and float(ok["sdpa_ms"]) > 0
    speed = json.loads((root / "0_tiny" / "metrics.json").read_text())["speed"]
    assert speed["kernel"] == "masked" and speed["layer"] == 0  # the trained hybrid's own layer was timed
    assert -100 < float(ok["loss_change_pct"]) < 1000 and 0 <= float(ok["mass_recall"]) <= 1 + 1e-6
    size = costs.ModelSize("tiny", 128, 2, 32)
    expected = costs.pair_cost(size, "indexer+softmax", n_layer=2, k=4)
    assert float(ok["model_flops_speedup"]) == pytest.approx(expected.model_speedup)
    assert float(ok["attn_flops_speedup"]) == pytest.approx(expected.attn_speedup)


def test_sweep_jobs_log_hparams(tiny_sweep):
    root, _ = tiny_sweep
    acc = EventAccumulator(str(root / "0_tiny" / "tensorboard")).Reload()
    assert "hparams" in acc.PluginTagToContent("hparams") or acc.PluginTagToContent("hparams")
    assert {"hparams/hybrid_loss", "hparams/attn_flops_speedup", "hparams/model_flops_speedup"} <= set(acc.Tags()["scalars"])


def test_flops_of_a_partly_sparse_hybrid():
    cfg = {"model": {"d_model": 256, "n_head": 4, "seq_len": 128, "n_layer": 4},
           "hybrid": {"layers": [0], "heads": [0, 1], "top_k": 16},
           "selector": {"name": "indexer", "d_index": 16}, "approximator": {"name": "softmax"}}
    got = costs.flops_columns(cfg)
    dense = costs.dense_layer(256, 4, 128).flops
    sparse = costs.sparse_layer("indexer+softmax", 256, 4, 128, 16).flops
    rest = costs.rest_of_layer(256, 128).flops
    assert got["sparse_heads"] == 2
    assert got["dense_model_flops"] == 4 * (rest + dense)
    assert got["sparse_model_flops"] == 3 * (rest + dense) + rest + sparse // 2 + dense // 2


def test_not_a_sweep_folder(tmp_path):
    with pytest.raises(UserError, match="no job folders"):
        sweep.gather(tmp_path)
    with pytest.raises(UserError, match="is not a folder"):
        sweep.gather(tmp_path / "missing")
    proc = run_cli("src.analyze", "sweep", str(tmp_path / "missing"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
