"""src/runs.py and src/checkpoints.py: run folders, JSON, finding runs, resume targets, reading checkpoints."""

from __future__ import annotations

import json

import pytest
import torch


from src.checkpoints import is_hybrid, read_checkpoint, run_checkpoints
from src.errors import UserError
from src.runs import finite, job_number, run_dir_for, run_folder, write_json


def test_write_json_has_no_nan(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.5}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2.5}}
    assert finite((1, float("-inf"))) == [1, None]


def test_run_folder_of_resume(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("stage: pipeline\n")
    (run / "teacher" / "checkpoints").mkdir(parents=True)
    ckpt = run / "teacher" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    stray = tmp_path / "x.ckpt"
    stray.write_bytes(b"x")
    assert run_folder(str(run)) == run
    assert run_folder(str(ckpt)) == run  # a pipeline step's checkpoint names its pipeline
    assert run_folder(str(run / "teacher")) == run
    assert run_folder(str(stray)) is None and run_folder(str(tmp_path / "nothing")) is None
    monkeypatch.setattr(src.runs, "OUTPUT_ROOT", tmp_path / "outputs")
    assert run_dir_for(str(ckpt), "teacher", "baby") == str(run)
    fresh = run_dir_for(str(stray), "teacher", "baby")  # never the stray file's folder: a fresh run folder
    assert fresh.startswith(str(tmp_path / "outputs" / "teacher" / "baby"))


def test_job_number_sorts_numerically(tmp_path):
    names = ["10_small", "9_tiny", "0_tiny"]
    assert [p.name for p in sorted((tmp_path / n for n in names), key=job_number)] == ["0_tiny", "9_tiny", "10_small"]


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="no teacher checkpoint at .*: train one"):
        read_checkpoint(tmp_path / "none.ckpt", "teacher", "train one")
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(UserError, match="cannot read checkpoint .*junk.ckpt"):
        read_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"hyper_parameters": {"model": {}}, "state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="is not a checkpoint of this project"):
        read_checkpoint(tmp_path / "other.ckpt")
    good = {"hyper_parameters": {"model": {}, "vocab": ["a"]}, "state_dict": {}}
    torch.save(good, tmp_path / "good.ckpt")
    assert not is_hybrid(read_checkpoint(tmp_path / "good.ckpt"))
    with pytest.raises(UserError, match="is not a distill_selector checkpoint"):
        read_checkpoint(tmp_path / "good.ckpt", "distill_selector", keys={"hybrid"})


def test_run_checkpoints_order(tmp_path):
    for folder, name in (("approximator", "last.ckpt"), ("teacher", "best.ckpt"), ("teacher", "last.ckpt")):
        (tmp_path / folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "checkpoints" / name).write_bytes(b"x")
    found = run_checkpoints(tmp_path, ("approximator", "", "teacher"))
    assert [str(p.relative_to(tmp_path)) for p in found] == [
        "approximator/checkpoints/last.ckpt", "teacher/checkpoints/best.ckpt", "teacher/checkpoints/last.ckpt"]
