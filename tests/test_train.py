"""``python -m src.train`` (src/train.py): bad settings and bad data are one line before any work, and a refused
command leaves no trace; the CLI, multirun and DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from src.errors import UserError
from src.train import train
from tests.conftest import ROOT, TINY, compose_config, copy_run, run_cli, run_main


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
    ("device.precision=fp8", "device.precision=fp8 is unknown: use one of auto, 32-true, bf16-mixed"),
])
def test_bad_numbers_are_one_line_before_any_work(tiny_cfg, tmp_path, override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train(tiny_cfg(override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="device=cuda but torch sees no CUDA GPU here: use device=cpu"):
        train(tiny_cfg("device=cuda"), tmp_path)


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


@pytest.mark.slow
def test_cli_bad_input_is_one_clear_message(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_cli("src.train", "data=text_file", f"data.path={empty}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2
    assert "error: data.path=" in proc.stderr and "is empty" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    proc = run_cli("src.sample", f"ckpt={tmp_path}/none.ckpt")
    assert proc.returncode == 2 and "no checkpoint at" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_misspelt_key(tmp_path):
    proc = run_cli("src.train", "model.d_modle=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "d_modle" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_multirun_two_jobs(tmp_path):
    proc = run_cli("src.train", "-m", "model=tiny,small", *[o for o in TINY if not o.startswith("model=")],
                   "model.n_layer=1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert jobs == ["0_tiny", "1_small"]
    for job in jobs:
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((tmp_path / job / "metrics.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    proc = run_cli("src.train", *TINY, "device=ddp", "device.accelerator=cpu", "device.devices=2",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["checkpoint"].endswith("best.ckpt")
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out


# --------------------------------------------------------------------------------- a refused command leaves no trace


def folders(root) -> set:
    return {p.relative_to(root) for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.parametrize("argv", [
    ["trainer.max_steps=0"],  # a bad number
    ["data=text_file", "data.path=/nonexistent.txt"],  # bad data, found once the stage starts
    ["+experiment=distill_selector"],  # nothing to start from
    ["resume=/nonexistent"],  # resume of nothing
])
def test_a_refused_command_leaves_no_stub_folder(tmp_path, capsys, argv):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    assert run_main(*TINY, f"paths.outputs={outputs}", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert folders(outputs) == set()  # no timestamped folder left behind


def test_resume_of_an_empty_folder_leaves_nothing(tmp_path, capsys):
    outputs, empty = tmp_path / "outputs", tmp_path / "empty"
    empty.mkdir()
    assert run_main(*TINY, f"paths.outputs={outputs}", f"resume={empty}") == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert folders(outputs) == set() and folders(empty) == set()


def test_a_refused_resume_writes_nothing_into_a_finished_run(tmp_path, teacher_run, capsys):
    """`resume=` of a finished run (nothing to resume) or with another stage: one line, and the run folder is byte
    for byte as it was (no error.json, no .hydra/resumed-*, no line in train.log) -- so `analyze sweep` still counts
    it finished."""
    run = copy_run(Path(teacher_run["run_dir"]), tmp_path / "run")
    (run / "train.log").write_text("the run's own log\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for extra in ([], ["+experiment=pipeline"]):
        assert run_main(*TINY, f"paths.outputs={tmp_path / 'outputs'}", f"resume={run}", *extra) == 2
        assert capsys.readouterr().err.startswith("error: ")
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_the_error_of_a_multirun_job_is_recorded_in_its_folder(tmp_path, capsys):
    """In a multirun the job folder is the sweep's record: the refused job's error.json and train.log say why."""
    sweep = tmp_path / "sweep"
    assert run_main("-m", *[o for o in TINY if not o.startswith("trainer.max_steps")], "model.n_layer=1",
                    "trainer.max_steps=-1", f"hydra.sweep.dir={sweep}", f"paths.outputs={tmp_path}") == 1
    job = sweep / "0_tiny"
    assert "trainer.max_steps=-1 must be 1 or more" in json.loads((job / "error.json").read_text())["error"]
    assert "error: trainer.max_steps=-1" in (job / "train.log").read_text()
    out = capsys.readouterr().out
    assert "failed: 0_tiny: trainer.max_steps=-1 must be 1 or more" in out
    assert f"tensorboard --logdir {sweep}" in out and "analyze sweep" not in out  # no pipeline job to gather
