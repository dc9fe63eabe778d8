"""``python -m src.analyze recall`` (src/analysis/recall.py) over run folders made here, as the stages write them: a
multirun of evaluate jobs (two selectors at two context lengths, a failed job), one evaluate run, one pipeline, one
teacher run, and folders without recall episodes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from src.analysis import recall
from src.analyze import main as analyze
from src.report.figures import recall_figure

DEPTHS = (0.1, 0.5, 0.9)
TASKS = ("passkey", "mqar")


def config(stage: str, seq_len: int, selector: str = "window", budget=256, mass=None) -> dict:
    return {"stage": stage, "data": {"name": "recall", "filler": "shakespeare"},
            "model": {"name": "long", "seq_len": seq_len},
            "selector": {"name": selector, "recent": 0, "block_size": 64}, "hybrid": {"budget": budget, "mass": mass}}


def share(model: str, task: str, depth: float, seq_len: int) -> float:
    """The made-up results: the teacher recalls everything but mqar's deepest needle at 2048; the window only what
    lies near the end (depth 0.9), more of it at the shorter length; query_block everything but the first depth."""
    if model == "teacher":
        return 0.75 if (task, depth, seq_len) == ("mqar", 0.1, 2048) else 1.0
    if model == "window":
        return {0.1: 0.0, 0.5: 0.5 if seq_len == 1024 else 0.25, 0.9: 1.0}[depth]
    return 0.5 if depth == 0.1 else 1.0


def probes(name: str, model: str, seq_len: int) -> dict:
    """What src/stages/probes.py reports for one model: recall per task, per task and depth, over all; the copy
    probe."""
    out = {}
    for task in TASKS:
        shares = [share(model, task, d, seq_len) for d in DEPTHS]
        out[f"test/{name}_recall/{task}"] = sum(shares) / len(shares)
        out.update({f"test/{name}_recall/{task}/d{d:g}": s for d, s in zip(DEPTHS, shares)})
    out[f"test/{name}_recall/all"] = sum(out[f"test/{name}_recall/{t}"] for t in TASKS) / len(TASKS)
    out.update({f"test/{name}_copy/g{g}": (0.2 if model == "teacher" else 0.9) + g / 10_000 for g in (200, 500)})
    return out


def evaluate_result(selector: str, seq_len: int, loss_change: float) -> dict:
    """evaluate's metrics.json (src/stages/evaluate.py): teacher and hybrid on the same episodes."""
    return {"stage": "evaluate", "test/teacher_loss": 1.5, "test/hybrid_loss": 1.5 * (1 + loss_change / 100),
            "test/loss_change_pct": loss_change, **probes("teacher", "teacher", seq_len),
            **probes("hybrid", selector, seq_len), "speed": {}}


def run_folder(folder: Path, cfg: dict, metrics: dict | None = None, error: str | None = None) -> Path:
    """A run's folder as Hydra and the stage leave it: .hydra/config.yaml, metrics.json or error.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (folder / "error.json").write_text(json.dumps({"error": error, "stage": cfg["stage"]}))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A multirun of evaluate jobs: window and query_block at 256 keys, T = 1024 and 2048; a fifth job failed."""
    root = tmp_path / "multirun"
    jobs = [("window", 1024, 3.0), ("query_block", 1024, 1.0), ("window", 2048, 4.0), ("query_block", 2048, 0.5)]
    for i, (selector, T, change) in enumerate(jobs):
        run_folder(root / f"{i}_recall", config("evaluate", T, selector), evaluate_result(selector, T, change))
    run_folder(root / "4_recall", config("evaluate", 2048, "block", budget=0.125, mass=0.9),
               error="CUDA out of memory\nmore lines")
    return root


def test_the_table_of_a_multirun(sweep, capsys):
    assert analyze(["recall", str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "recall.csv").open()))
    assert [(r["panel"], r["seq_len"], r["job"]) for r in rows] == [
        ("teacher", "1024", "0_recall"), ("query_block 256", "1024", "1_recall"), ("window 256", "1024", "0_recall"),
        ("teacher", "2048", "2_recall"), ("query_block 256", "2048", "3_recall"), ("window 256", "2048", "2_recall"),
        ("block T/8, mass 0.90", "2048", "4_recall")]
    assert [r["status"] for r in rows] == ["ok"] * 6 + ["failed"] and rows[-1]["error"] == "CUDA out of memory"
    teacher, window = rows[3], rows[5]
    assert float(teacher["mqar"]) == pytest.approx(2.75 / 3) and teacher["passkey_worst_depth"] == "0.1"
    assert float(teacher["mqar_worst"]) == 0.75 and teacher["mqar_worst_depth"] == "0.1"
    assert float(window["passkey"]) == pytest.approx(1.25 / 3) and float(window["passkey_d0.5"]) == 0.25
    assert float(window["passkey_worst"]) == 0 and window["passkey_worst_depth"] == "0.1"
    assert float(window["copy_g500"]) == pytest.approx(0.95) and float(teacher["copy_g200"]) == pytest.approx(0.22)
    assert float(window["loss_change_pct"]) == 4.0 and teacher["loss_change_pct"] == ""
    # the share of the teacher's answers kept at the worst depth: the window none at 0.1, query_block half of 0.75
    assert float(window["mqar_kept"]) == 0 and window["mqar_kept_depth"] == "0.1" and teacher["mqar_kept"] == ""
    query_block = rows[4]
    assert float(query_block["mqar_kept"]) == pytest.approx(0.5 / 0.75) and query_block["mqar_kept_depth"] == "0.1"
    assert float(query_block["passkey_kept"]) == 0.5
    assert (window["selector"], window["level"], window["budget"], window["budget_keys"]) == ("window", "token", "256",
                                                                                           "256")
    assert "multikey" not in rows[0]  # a task the runs did not measure has no columns
    printed = capsys.readouterr().out
    assert "## T = 2048 (filler: shakespeare)" in printed
    assert ("| window 256 | 41.7% | 0.0% (d0.1) | 0.0% (d0.1) | 41.7% | 0.0% (d0.1) | 0.0% (d0.1) | 0.920 | 0.950 | "
            "+4.00% |") in printed
    assert "| teacher | 100.0% | 100.0% (d0.1) | – | 91.7% | 75.0% (d0.1) | – | 0.220 | 0.250 | – |" in printed
    assert "- 4_recall (failed): CUDA out of memory" in printed
    assert (sweep / "recall.md").read_text() in printed
    assert json.loads((sweep / "recall.json").read_text())[1]["panel"] == "query_block 256"
    assert (sweep / "recall.png").stat().st_size > 10_000


def test_the_heatmaps(sweep):
    """A row of panels per task, one per model, depth against context length, every cell written."""
    rows = [r for r in recall.gather(sweep) if r["status"] == "ok"]
    tasks, depths, gaps = recall.layout(rows)
    assert (tasks, depths, gaps) == (["passkey", "mqar"], ["0.1", "0.5", "0.9"], ["200", "500"])
    fig = recall_figure(rows, tasks, depths)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["teacher", "query_block 256", "window 256"] * 2
    window = panels[5]  # mqar, window 256: depths down, T = 1024, 2048 across
    assert [t.get_text() for t in window.get_xticklabels()] == ["1024", "2048"]
    assert [t.get_text() for t in window.texts] == ["0%", "0%", "50%", "25%", "100%", "100%"]
    assert panels[3].get_ylabel() == "mqar\nneedle depth" and panels[3].texts[1].get_text() == "75%"


def test_many_models_wrap(tmp_path):
    rows = [{"panel": f"window {k}", "seq_len": T, "passkey_d0.5": 0.5} for k in range(12) for T in (1024, 2048, 4096)]
    fig = recall_figure(rows, ["passkey"], ["0.5"])
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(shown) == 12 and fig.get_figwidth() < 20  # wrapped onto several rows, not one very wide row


def test_one_evaluate_run(tmp_path, capsys):
    """An evaluate run's folder (its config in results.json, as evaluate writes it): the teacher and the hybrid."""
    run = tmp_path / "evaluate" / "long" / "2026-12-01_10-00-00"
    cfg = config("evaluate", 2048, "query_block")
    run_folder(run, cfg, evaluate_result("query_block", 2048, 0.5))
    (run / "results.json").write_text(json.dumps({"config": cfg}))
    assert analyze(["recall", str(run)]) == 0
    rows = list(csv.DictReader((run / "recall.csv").open()))
    assert [(r["panel"], r["passkey_worst"], r["passkey_worst_depth"]) for r in rows] == [
        ("teacher", "1.0", "0.1"), ("query_block 256", "0.5", "0.1")]
    assert "| query_block 256 | 83.3% | 50.0% (d0.1) |" in capsys.readouterr().out
    assert (run / "recall.png").is_file()


def test_a_pipeline_and_a_teacher_run(tmp_path):
    """A pipeline's folder (the evaluate step's numbers in its metrics.json) and a teacher run's (the teacher alone:
    no loss change)."""
    cfg = config("pipeline", 1024, "window", budget=0.25)
    pipeline = run_folder(tmp_path / "pipeline", cfg, {"stage": "pipeline", "config": cfg,
                                                       "evaluate": evaluate_result("window", 1024, 2.0)})
    assert [(r["panel"], r["loss_change_pct"]) for r in recall.gather(pipeline)] == [("teacher", None),
                                                                                     ("window T/4", 2.0)]
    teacher = run_folder(tmp_path / "teacher", config("teacher", 2048),
                         {"stage": "teacher", "test/loss": 1.5, **probes("teacher", "teacher", 2048)})
    rows = recall.gather(teacher)
    assert [(r["panel"], r["model"], r["seq_len"], r["mqar_worst"]) for r in rows] == [("teacher", "teacher", 2048,
                                                                                        0.75)]
    recall.write(rows, teacher)
    assert (teacher / "recall.png").stat().st_size > 5_000


def test_no_recall_episodes_is_one_line(tmp_path, capsys):
    """Runs on another corpus (the copy probe only), an empty folder, a failed run: one line naming the fix, exit
    status 2, no traceback."""
    root = tmp_path / "multirun"
    cfg = {**config("evaluate", 2048), "data": {"name": "shakespeare"}}
    result = {k: v for k, v in evaluate_result("window", 2048, 1.0).items() if "_recall/" not in k}
    run_folder(root / "0_shakespeare", cfg, result)
    assert analyze(["recall", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root} holds no results of recall episodes: run evaluate with data=recall: ")
    assert "`python -m src.train +experiment=pipeline data=recall`" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err and not (root / "recall.csv").exists()
    (tmp_path / "empty").mkdir()
    assert analyze(["recall", str(tmp_path / "empty")]) == 2
    assert "holds no job folders" in capsys.readouterr().err
    failed = run_folder(tmp_path / "failed", config("evaluate", 2048), error="no checkpoint")
    assert analyze(["recall", str(failed)]) == 2
    err = capsys.readouterr().err
    assert "(failed failed: no checkpoint): run evaluate with data=recall" in err and "Traceback" not in err
    running = run_folder(tmp_path / "running", config("teacher", 2048))
    assert analyze(["recall", str(running)]) == 2
    assert "(running unfinished: no metrics.json: the job was stopped or is still running)" in capsys.readouterr().err
