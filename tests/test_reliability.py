"""What a new user runs into: diverged or empty runs, resume of every stage and of the pipeline, Ctrl-C, bad
settings -- each a finished result kept or one clear line, never a hang, a traceback or a broken run passed on."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch


from src.errors import UserError
from src.runs import find_run, stage_spec, write_json
from src.train import train
from tests.conftest import ROOT, TINY, compose_config, run_cli


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(src.runs, "OUTPUT_ROOT", tmp_path / "outputs")


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=0", "trainer.max_steps=0 must be 1 or more"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1 must be 1 or more"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5 must be 1 or more"),
    ("trainer.val_every=0", "trainer.val_every=0 must be 1 or more"),
    ("optim.lr=0", "optim.lr=0.0 must be a positive learning rate"),
    ("optim.lr=-1", "optim.lr=-1.0 must be a positive learning rate"),
    ("optim.min_lr=1", "optim.min_lr=1.0 must be in [0, optim.lr="),
    ("optim.beta2=1", "optim.beta2=1.0 must be in [0, 1)"),
    ("selector.max_steps=0", "selector.max_steps=0 must be 1 or more"),
    ("approximator.lr=0", "approximator.lr=0.0 must be a positive learning rate"),
    ("data.batch_size=0", "data.batch_size=0 must be 1 or more"),
])
def test_bad_numbers_are_one_line_before_any_work(tiny_cfg, tmp_path, override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train(tiny_cfg(override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="device=cuda but torch sees no CUDA GPU here: use device=cpu"):
        train(tiny_cfg("device=cuda"), tmp_path)


def test_a_diverged_teacher_stops_and_is_never_used(tiny_cfg, tmp_path):
    """optim.lr=1e6 without warm-up: one line at the first non-finite loss; no metrics.json, so no later stage or
    search picks it up."""
    run = tmp_path / "outputs" / "teacher" / "nan"
    with pytest.raises(UserError, match="the training loss became (nan|inf) at step .*: training diverged; lower "
                                        "optim.lr"):
        train(tiny_cfg("optim.lr=1e6", "optim.warmup_steps=0", "trainer.max_steps=30"), run)
    assert not (run / "metrics.json").exists()
    assert find_run("teacher", stage_spec(tiny_cfg(), "teacher")) is None


def test_a_teacher_without_a_finite_loss_is_not_found(tiny_cfg, tmp_path):
    """A run folder whose metrics.json records no finite validation loss (NaN is written as null) is skipped."""
    good = train(tiny_cfg(), tmp_path / "outputs" / "teacher" / "good")
    bad = tmp_path / "outputs" / "teacher" / "bad"
    (bad / "checkpoints").mkdir(parents=True)
    (bad / "checkpoints" / "best.ckpt").write_bytes(b"x")
    write_json(bad / "metrics.json", {**json.loads((tmp_path / "outputs/teacher/good/metrics.json").read_text()),
                                      "checkpoint": str(bad / "checkpoints" / "best.ckpt"),
                                      "best_val_loss": float("nan")})
    assert json.loads((bad / "metrics.json").read_text())["best_val_loss"] is None  # valid JSON: null, not NaN
    assert find_run("teacher", stage_spec(tiny_cfg(), "teacher")) == good["checkpoint"]


def test_corpus_of_one_character_and_a_folder_as_data_path(tiny_cfg, tmp_path):
    (tmp_path / "a.txt").write_text("a" * 5000)
    with pytest.raises(UserError, match="has a single distinct character \\('a'\\)"):
        train(tiny_cfg("data=text_file", f"data.path={tmp_path}/a.txt"), tmp_path / "run")
    with pytest.raises(UserError, match="is a folder: give the path of one UTF-8 text file"):
        train(tiny_cfg("data=text_file", f"data.path={tmp_path}"), tmp_path / "run2")


def test_short_corpus_hint_names_the_setting(tiny_cfg, tmp_path):
    (tmp_path / "short.txt").write_text("abcdefgh" * 10)
    with pytest.raises(UserError, match=r"a shorter model.seq_len \(now 32\)"):
        train(tiny_cfg("data=text_file", f"data.path={tmp_path}/short.txt"), tmp_path / "run")


# ------------------------------------------------------------------------------------------------- resume


def test_a_finished_run_is_not_overwritten(tiny_cfg, tmp_path):
    run = tmp_path / "teacher"
    train(tiny_cfg(), run)
    before = (run / "metrics.json").read_text()
    with pytest.raises(UserError, match="is finished \\(metrics.json\\): nothing to resume; to train it longer, give "
                                        "trainer.max_steps above 4"):
        train(tiny_cfg(f"resume={run}"), run)
    assert (run / "metrics.json").read_text() == before


def test_resume_needs_a_run_folder(tiny_cfg, tmp_path):
    run = tmp_path / "teacher"
    train(tiny_cfg(), run)
    stray = tmp_path / "copy.ckpt"
    stray.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(UserError, match="is not a checkpoint of a run folder"):
        train(tiny_cfg(f"resume={stray}", "trainer.max_steps=8"), tmp_path)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="cannot read .*last.ckpt .*start it again without resume="):
        train(tiny_cfg(f"resume={run}", "trainer.max_steps=8"), run)


def test_resume_continues_a_distillation_stage(tiny_cfg, tmp_path):
    """A selector run stopped after 2 of its steps continues to 4 from its checkpoint, instead of starting again."""
    teacher = train(tiny_cfg(), tmp_path / "outputs" / "teacher" / "t")
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


def test_ctrl_c_saves_a_checkpoint_and_the_run_continues(tiny_cfg, tmp_path, monkeypatch, capsys):
    run = tmp_path / "teacher"
    build = src.runs.build_trainer

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


def test_resume_a_pipeline_skips_its_finished_steps(tiny_cfg, tmp_path, monkeypatch):
    parts = ["+experiment=pipeline", "selector.max_steps=2", "approximator.max_steps=2"]
    run = tmp_path / "pipeline"
    train(tiny_cfg(*parts), run)
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


def test_resume_with_another_stage_is_refused(tiny_cfg, tmp_path):
    run = tmp_path / "t"
    train(tiny_cfg(), run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("stage: pipeline\n")
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="is a pipeline run, but this command runs stage teacher"):
        train(tiny_cfg(f"resume={run}", "trainer.max_steps=8"), run)


# ------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_multirun_with_a_failed_job_exits_non_zero_in_one_line(tmp_path):
    proc = run_cli("src.train", "-m", *[o for o in TINY if not o.startswith("trainer.max_steps")],
                   "model.n_layer=1", "trainer.max_steps=2,-1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1
    assert "failed: 1_tiny: trainer.max_steps=-1 must be 1 or more" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "error: trainer.max_steps=-1" in (tmp_path / "1_tiny" / "train.log").read_text()
    proc = run_cli("src.analyze", "sweep", str(tmp_path))  # teachers only: nothing to compare, said in one line
    assert proc.returncode == 2 and "holds no pipeline job" in proc.stderr and "Traceback" not in proc.stderr


def test_config_of_the_tools_folder_is_not_a_group():
    assert (ROOT / "conf" / "cli" / "sample.yaml").is_file()
    assert compose_config(["ckpt=x"], config_name="sample").model == "auto"
