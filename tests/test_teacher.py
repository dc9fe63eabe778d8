"""The teacher stage end to end on tiny settings: fast_dev_run, checkpoints, resume, CLI, multirun, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.sample import generate
from src.stages.teacher import load_teacher, warmup_cosine
from src.train import train
from tests.conftest import TINY, compose_config, run_cli


def test_fast_dev_run(tiny_cfg, tmp_path):
    result = train(tiny_cfg("+experiment=teacher", "trainer.fast_dev_run=true"), tmp_path)
    assert result["test/loss"] > 0 and result["fast_dev_run"]
    # one checkpoint is left so that a pipeline can chain its stages, but no run will ever reuse it
    assert result["checkpoint"].endswith("last.ckpt") and not (tmp_path / "checkpoints" / "best.ckpt").exists()


def test_lr_schedule():
    lrs = [warmup_cosine(s, 10, 100, 1e-3, 1e-4) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_checkpoint_round_trip_and_logs(tiny_cfg, tmp_path):
    cfg = tiny_cfg("data=shakespeare", "data.val_fraction=0.002", "data.test_fraction=0.002")
    result = train(cfg, tmp_path)
    ckpt = Path(result["checkpoint"])
    assert ckpt.name == "best.ckpt" and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4

    teacher = load_teacher(ckpt)
    assert teacher.vocab.itos == sorted(set(teacher.vocab.itos)) and "\n" in teacher.vocab.itos
    raw = torch.load(ckpt, weights_only=False)
    assert raw["hyper_parameters"]["vocab"] == teacher.vocab.itos  # the vocabulary travels in the checkpoint
    x = torch.randint(0, len(teacher.vocab), (2, 32))
    again = load_teacher(ckpt)
    torch.testing.assert_close(teacher(x), again(x))

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()
    assert {"train/loss", "val/loss", "val/ppl", "train/device/items_per_sec", "train/device/flops_per_sec"} <= set(
        tags["scalars"])
    assert any(t.startswith("lr") for t in tags["scalars"])
    assert any("sample" in t for t in tags["tensors"])  # text samples are stored as tensors

    texts = generate(compose_config([f"ckpt={tmp_path}", "num_chars=25", "prompt=ROMEO:"], config_name="sample")).texts
    assert len(texts) == 1 and texts[0].startswith("ROMEO:") and len(texts[0]) == len("ROMEO:") + 25


def test_resume_continues_same_run(tiny_cfg, tmp_path):
    train(tiny_cfg(), tmp_path)
    result = train(tiny_cfg(f"resume={tmp_path}", "trainer.max_steps=8"), tmp_path)
    assert result["steps"] == 8
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir() if p.name.startswith("events")).__len__() >= 1
    steps = [e.step for e in EventAccumulator(str(tmp_path / "tensorboard")).Reload().Scalars("train/loss")]
    assert max(steps) >= 7  # the second run logged on the same curve, after the first


def test_resume_with_other_settings_names_them(tiny_cfg, tmp_path):
    from src.errors import UserError

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- model.n_layer=2\n")
    train(tiny_cfg(), tmp_path)
    with pytest.raises(UserError, match=r"trained with model.n_layer=2 \(now 1\).*resume=.* model=tiny model.n_layer=2"):
        train(tiny_cfg(f"resume={tmp_path}", "model.n_layer=1", "trainer.max_steps=8"), tmp_path)


def test_best_val_loss_is_on_the_whole_validation_split(tiny_cfg, tmp_path):
    """Periodic validations read trainer.limit_val_batches; the reported best is re-measured on the whole split."""
    from src.stages.teacher import build_datamodule

    cfg = tiny_cfg("trainer.limit_val_batches=1")
    result = train(cfg, tmp_path)
    module = load_teacher(result["checkpoint"])
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in build_datamodule(cfg).val_dataloader():
            logits = module.gpt(x)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    assert count > cfg.data.batch_size * cfg.model.seq_len  # more than the one batch the periodic ones read
    assert result["best_val_loss"] == pytest.approx(total / count, rel=1e-4)


def test_resume_missing_checkpoint(tiny_cfg, tmp_path):
    from src.errors import UserError

    with pytest.raises(UserError, match="nothing: no such run folder or checkpoint"):
        train(tiny_cfg(f"resume={tmp_path}/nothing"), tmp_path)
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no checkpoint at .*the run saved none"):
        train(tiny_cfg(f"resume={tmp_path}/run"), tmp_path / "run")


def test_load_teacher_errors(tmp_path):
    from src.errors import UserError

    with pytest.raises(UserError, match=r"python -m src.train \+experiment=teacher"):
        load_teacher(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_teacher(bad)
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="not a teacher checkpoint"):
        load_teacher(tmp_path / "other.ckpt")


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
