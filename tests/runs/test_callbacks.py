"""The callbacks (src/runs/callbacks.py): Ctrl-C saves last.ckpt and says how to continue, on the console and in the
run's train.log; the multirun's closing lines name the analysis that fits its jobs."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from src.runs.callbacks import SweepSummary
from tests.conftest import TINY, run_main
from tests.runs.test_resume import Interrupt


@pytest.mark.slow  # trains a run
def test_ctrl_c_is_said_in_the_log_too(tmp_path, monkeypatch, capsys):
    from src.runs.trainer import build_trainer

    def interrupted(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.callbacks.append(Interrupt(3))
        return trainer

    monkeypatch.setattr("src.stages.teacher.build_trainer", interrupted)
    assert run_main(*TINY, "trainer.max_steps=8", f"paths.outputs={tmp_path}") == 1
    (run,) = (tmp_path / "teacher" / "tiny").iterdir()
    err = capsys.readouterr().err
    log = (run / "train.log").read_text()
    for text in ("interrupted at step 3: saved", f"continue with: python -m src.train resume={run}"):
        assert text in err and text in log
    assert (run / "checkpoints" / "last.ckpt").is_file()


def job(root, name: str, config: dict, metrics: dict | None = None, error: str | None = None):
    (root / name / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), root / name / ".hydra" / "config.yaml")
    if metrics is not None:
        (root / name / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (root / name / "error.json").write_text(json.dumps({"error": error}))


def close(root) -> str:
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))


@pytest.mark.parametrize("configs,expected", [
    ([{"stage": "teacher"}], "each job's results are in its metrics.json; compare them with: tensorboard --logdir"),
    ([{"stage": "pipeline"}], "gather the results: python -m src.analyze sweep"),
    ([{"stage": "pipeline", "curve": {}}], "gather the results: python -m src.analyze budget"),
])
def test_the_closing_lines_name_what_fits(tmp_path, capsys, configs, expected):
    for i, config in enumerate(configs):
        job(tmp_path, f"{i}_tiny", config, metrics={"stage": config["stage"]})
    close(tmp_path)
    out = capsys.readouterr().out
    assert "1 jobs, 1 finished, 0 failed" in out and f"{expected} {tmp_path}" in out


def test_a_failed_job_is_named_and_the_multirun_fails(tmp_path, capsys):
    job(tmp_path, "0_tiny", {"stage": "teacher"}, metrics={"stage": "teacher"})
    job(tmp_path, "1_tiny", {"stage": "teacher"}, error="trainer.max_steps=-1 must be 1 or more\nmore")
    with pytest.raises(SystemExit) as e:
        close(tmp_path)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "2 jobs, 1 finished, 1 failed" in out and "failed: 1_tiny: trainer.max_steps=-1 must be 1 or more\n" in out
