"""Resume (src/runs/resume.py): every stage and the pipeline continue from last.ckpt; what cannot be resumed is one line
and changes nothing."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.errors import UserError
from src.train import train
from tests.conftest import PARTS, copy_run


def test_a_finished_run_is_not_overwritten(tiny_cfg, teacher_copy):
    run = teacher_copy
    before = (run / "metrics.json").read_text()
    with pytest.raises(UserError, match="is finished \\(metrics.json\\): nothing to resume; to train it longer, give "
                                        "trainer.max_steps above 4"):
        train(tiny_cfg(f"resume={run}"), run)
    assert (run / "metrics.json").read_text() == before


def test_resume_needs_a_run_folder(tiny_cfg, tmp_path, teacher_copy):
    run = teacher_copy
    stray = tmp_path / "copy.ckpt"
    stray.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(UserError, match="is not a checkpoint of a run folder"):
        train(tiny_cfg(f"resume={stray}", "trainer.max_steps=8"), tmp_path)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="cannot read .*last.ckpt .*start it again without resume="):
        train(tiny_cfg(f"resume={run}", "trainer.max_steps=8"), run)


def test_resume_continues_a_distillation_stage(tiny_cfg, tmp_path, teacher_ckpt):
    """A selector run stopped after 2 of its steps continues to 4 from its checkpoint, instead of starting again."""
    teacher = {"checkpoint": teacher_ckpt}
    run = tmp_path / "selector"
    parts = ["+experiment=distill_selector", f"teacher.ckpt={teacher['checkpoint']}"]
    first = train(tiny_cfg(*parts, "selector.max_steps=2"), run)
    assert first["steps"] == 2
    (run / "metrics.json").unlink()  # as if it had been interrupted after its last checkpoint
    again = train(tiny_cfg(*parts, "selector.max_steps=4", f"resume={run}"), run)
    assert again["steps"] == 4


class Interrupt(L.Callback):
    """Ctrl-C after ``at`` training steps."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at:
            raise KeyboardInterrupt


@pytest.mark.slow  # trains a run
def test_ctrl_c_saves_a_checkpoint_and_the_run_continues(tiny_cfg, tmp_path, monkeypatch, capsys):
    run = tmp_path / "teacher"
    from src.runs.trainer import build_trainer as build


    def interrupted(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(Interrupt(3))
        return trainer

    monkeypatch.setattr("src.stages.teacher.build_trainer", interrupted)
    with pytest.raises(SystemExit):
        train(tiny_cfg("trainer.max_steps=8", "trainer.val_every=8"), run)
    err = capsys.readouterr().err
    assert "interrupted at step 3: saved" in err and f"continue with: python -m src.train resume={run}" in err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    monkeypatch.setattr("src.stages.teacher.build_trainer", build)
    resumed = train(tiny_cfg("trainer.max_steps=8", "trainer.val_every=8", f"resume={run}"), run)
    assert resumed["steps"] == 8
    # exact: the same numbers as the same run without the interruption (each step's batch depends on the step only)
    whole = train(tiny_cfg("trainer.max_steps=8", "trainer.val_every=8"), tmp_path / "whole")
    assert (resumed["best_val_loss"], resumed["test/loss"]) == (whole["best_val_loss"], whole["test/loss"])


def test_resume_a_pipeline_skips_its_finished_steps(tiny_cfg, tmp_path, monkeypatch, pipeline_run):
    parts = ["+experiment=pipeline", *PARTS]
    run = copy_run(pipeline_run, tmp_path / "pipeline")
    teacher_metrics = (run / "teacher" / "metrics.json").read_text()
    for step in ("metrics.json", "evaluate/metrics.json", "approximator/metrics.json", "selector/metrics.json"):
        (run / step).unlink()  # as if it had stopped at the end of the selector's distillation
    calls = []
    import src.stages.teacher

    monkeypatch.setattr(src.stages.teacher, "run", lambda *a: calls.append("teacher"))
    result = train(tiny_cfg(*parts, f"resume={run}"), run)
    assert calls == [] and (run / "teacher" / "metrics.json").read_text() == teacher_metrics
    assert result["selector"]["steps"] == 2 and (run / "metrics.json").is_file()
    with pytest.raises(UserError, match="is finished"):
        train(tiny_cfg(*parts, f"resume={run}"), run)


def test_resume_with_another_stage_is_refused(tiny_cfg, teacher_copy):
    run = teacher_copy
    (run / ".hydra" / "config.yaml").write_text("stage: pipeline\n")
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="is a pipeline run, but this command runs stage teacher"):
        train(tiny_cfg(f"resume={run}", "trainer.max_steps=8"), run)


def test_resume_continues_same_run(tiny_cfg, teacher_copy):
    run = teacher_copy
    result = train(tiny_cfg(f"resume={run}", "trainer.max_steps=8"), run)
    assert result["steps"] == 8
    steps = [e.step for e in EventAccumulator(str(run / "tensorboard")).Reload().Scalars("train/loss")]
    assert min(steps) <= 3 and max(steps) >= 7  # the second run logged on the same curve, after the first


def test_resume_with_other_settings_names_them(tiny_cfg, tmp_path, teacher_run):
    run = copy_run(Path(teacher_run["run_dir"]), tmp_path / "run", ("model=tiny", "model.n_layer=2"))
    with pytest.raises(UserError, match=r"trained with model.n_layer=2 \(this run: 1\).*resume=.* model=tiny "
                                        r"model.n_layer=2"):
        train(tiny_cfg(f"resume={run}", "model.n_layer=1", "trainer.max_steps=8"), run)


def test_resume_missing_checkpoint(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="nothing: no such run folder or checkpoint"):
        train(tiny_cfg(f"resume={tmp_path}/nothing"), tmp_path)
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # a run that stopped before its first checkpoint
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("stage: teacher\n")
    with pytest.raises(UserError, match="no checkpoint at .*the run saved none"):
        train(tiny_cfg(f"resume={tmp_path}/run"), tmp_path / "run")
