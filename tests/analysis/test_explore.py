"""notebooks/explore.ipynb runs end to end on a tiny pipeline run and on a (fake) sweep folder;
src/analysis/explore.py's readers tolerate what is missing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from src.analysis import explore
from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


SWEEP_COLUMNS = ["job", "status", "model", "d_model", "n_head", "n_layer", "seq_len", "top_k", "selector",
                 "approximator", "teacher_loss", "hybrid_loss", "loss_change_pct", "kl", "logits_rel_err",
                 "mass_recall", "recall", "top1_acc", "attn_flops_speedup", "model_flops_speedup", "sdpa_ms",
                 "sparse_ms", "measured_speedup", "error"]


@pytest.fixture(scope="module")
def sweep_folder(pipeline_run, tmp_path_factory):
    """Two jobs (0_tiny finished: a copy of the run; 1_tiny failed), sweep.csv, a bench.csv and the cost tables."""
    from src.analyze import main as analyze

    root = tmp_path_factory.mktemp("sweep")
    shutil.copytree(pipeline_run, root / "0_tiny")
    (root / "1_tiny" / ".hydra").mkdir(parents=True)
    (root / "1_tiny" / ".hydra" / "config.yaml").write_text("stage: pipeline\n")
    (root / "1_tiny" / "error.json").write_text(json.dumps({"error": "UserError: top_k=999 > seq_len"}))
    ev = json.loads((pipeline_run / "evaluate" / "metrics.json").read_text())
    rows = [
        {"job": "0_tiny", "status": "ok", "model": "tiny", "d_model": 128, "n_head": 2, "n_layer": 2, "seq_len": 32,
         "top_k": 4, "selector": "indexer", "approximator": "softmax", "teacher_loss": ev["test/teacher_loss"],
         "hybrid_loss": ev["test/hybrid_loss"], "loss_change_pct": ev["test/loss_change_pct"],
         "mass_recall": ev["test/mass_recall"], "attn_flops_speedup": 0.5, "model_flops_speedup": 0.9,
         "sdpa_ms": 0.2, "sparse_ms": 0.4, "measured_speedup": 0.5},
        {"job": "1_tiny", "status": "failed", "model": "tiny", "d_model": 128, "seq_len": 32, "top_k": 999,
         "selector": "indexer", "approximator": "softmax", "error": "UserError: top_k=999 > seq_len"},
    ]
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (root / "bench").mkdir()
    (root / "bench" / "bench.csv").write_text(
        "T,variant,median_ms,speedup,peak_mb\n128,sdpa,0.10,1.0,2.0\n256,sdpa,0.30,1.0,6.0\n"
        "128,indexer+softmax,0.20,0.5,1.5\n256,indexer+softmax,0.25,1.2,2.5\n")
    assert analyze(["costs", "--out", str(root / "costs")]) == 0
    return root


def execute(tmp_path: Path, cwd: Path) -> nbformat.NotebookNode:
    """Run the notebook in a kernel of this very interpreter (whatever kernelspecs the machine has)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    spec = tmp_path / "kernels" / "explore-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "explore test", "language": "python",
    }))
    km = AsyncKernelManager(kernel_name="explore-test",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(cwd)}}).execute()  # raises on error
    return nb


def outputs(nb) -> tuple[str, int]:
    """All printed text (streams and markdown) and the number of images."""
    text, images = [], 0
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                text.append(o.text)
            data = o.get("data", {})
            images += "image/png" in data
            text.append(data.get("text/markdown", ""))
    return "\n".join(text), images


def test_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow  # a Jupyter kernel: a process of its own
def test_notebook_on_a_pipeline_run(pipeline_run, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORE_RUN", str(pipeline_run))
    monkeypatch.delenv("EXPLORE_JOB", raising=False)
    text, images = outputs(execute(tmp_path, cwd=ROOT / "notebooks"))  # as opened from notebooks/
    assert "kind: pipeline" in text
    assert "could not load the hybrid" not in text  # the attention picture came from the checkpoints
    assert "Hybrid vs teacher" in text and "**selector**" in text  # results.md and the metrics tables
    assert images >= 4  # teacher, selector, approximator curves + the attention picture


@pytest.mark.slow  # a Jupyter kernel: a process of its own
def test_notebook_on_a_sweep(sweep_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORE_RUN", str(sweep_folder))
    monkeypatch.delenv("EXPLORE_JOB", raising=False)
    text, images = outputs(execute(tmp_path, cwd=ROOT))  # as opened from the repository root
    assert "kind: sweep" in text and "failed: 1_tiny (failed): UserError: top_k=999" in text
    assert f"per-run plots for: {sweep_folder / '0_tiny'}" in text
    assert "could not load the hybrid" not in text
    # sweep + 3 curves + attention + bench + costs
    assert images >= 7


def test_readers_tolerate_missing_things(tmp_path):
    assert explore.newest_run(tmp_path / "nothing") is None
    assert explore.read_csv(tmp_path / "missing.csv") == []
    assert explore.scalars(tmp_path / "no_tensorboard") == {} and explore.logged_images(tmp_path) == {}
    assert explore.folder_kind(tmp_path) == "other"
    (tmp_path / "b.csv").write_text("seq_len,variant,median_ms,extra\n64,sdpa,0.5,\n128,sdpa,,x\n")
    rows = explore.read_csv(tmp_path / "b.csv")
    assert rows[0] == {"seq_len": 64, "variant": "sdpa", "median_ms": 0.5, "extra": None}
    assert rows[1]["median_ms"] is None and rows[1]["extra"] == "x"
    assert explore.bench_figure(rows) is not None  # seq_len instead of T; no speedup or peak_mb columns
    assert explore.bench_figure([{"variant": "sdpa"}]) is None
    assert explore.sweep_figure([{"job": "0", "status": "failed"}]) is None
    assert explore.failed_jobs([{"job": "0", "status": "failed", "error": "boom"}]) == ["0 (failed): boom"]
    assert explore.curves_figure("teacher", {"test/loss": ([0], [1.0])}) is None


def test_newest_run_and_kinds(tmp_path):
    old = tmp_path / "teacher" / "baby" / "2026-01-01_00-00-00"
    (old / "tensorboard").mkdir(parents=True)
    (old / "teacher").mkdir()  # a pipeline's stage folder is not a run of its own
    sweep = tmp_path / "multirun" / "2026-01-02_00-00-00"
    (sweep / "0_tiny" / ".hydra").mkdir(parents=True)
    (sweep / "0_tiny" / ".hydra" / "config.yaml").write_text("stage: pipeline\n")
    (sweep / "not_a_job").mkdir()
    (sweep / "multirun.yaml").write_text("{}")
    os.utime(old, (1, 1))
    assert explore.runs_under(tmp_path) == [sweep, old]
    assert explore.newest_run(tmp_path) == sweep
    assert explore.folder_kind(sweep) == "sweep" and explore.folder_kind(old) == "pipeline"
    assert explore.sweep_jobs(sweep) == [sweep / "0_tiny"]
