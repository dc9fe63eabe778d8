"""The teacher stage (src/stages/teacher.py) end to end on tiny settings: fast_dev_run, checkpoints and logs, the final
validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.sample import generate
from src.stages.teacher import load_teacher, warmup_cosine
from src.train import train
from tests.conftest import compose_config


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


def test_checkpoint_round_trip_and_logs(teacher_run):
    """The session teacher: its checkpoints, the vocabulary inside them, its TensorBoard scalars and text samples."""
    run, ckpt = Path(teacher_run["run_dir"]), Path(teacher_run["checkpoint"])
    assert ckpt.name == "best.ckpt" and (run / "checkpoints" / "last.ckpt").is_file() and teacher_run["steps"] == 4
    teacher = load_teacher(ckpt)
    raw = torch.load(ckpt, weights_only=False)
    assert raw["hyper_parameters"]["vocab"] == teacher.vocab.itos  # the vocabulary travels in the checkpoint
    x = torch.randint(0, len(teacher.vocab), (2, 32))
    torch.testing.assert_close(teacher(x), load_teacher(ckpt)(x))
    tags = EventAccumulator(str(run / "tensorboard")).Reload().Tags()
    assert {"train/loss", "val/loss", "val/ppl", "train/device/items_per_sec", "train/device/flops_per_sec"} <= set(
        tags["scalars"])
    assert any(t.startswith("lr") for t in tags["scalars"])
    assert any("sample" in t for t in tags["tensors"])  # text samples are stored as tensors


@pytest.mark.slow
def test_a_shakespeare_teacher_samples_from_a_prompt(tiny_cfg, tmp_path):
    """On the real corpus (a few seconds to read and encode it): the vocabulary is the plays' characters, and the
    teacher's run folder continues a prompt."""
    cfg = tiny_cfg("data=shakespeare", "data.val_fraction=0.002", "data.test_fraction=0.002")
    train(cfg, tmp_path)
    teacher = load_teacher(tmp_path / "checkpoints" / "best.ckpt")
    assert teacher.vocab.itos == sorted(set(teacher.vocab.itos)) and "\n" in teacher.vocab.itos
    texts = generate(compose_config([f"ckpt={tmp_path}", "num_chars=25", "prompt=ROMEO:"], config_name="sample")).texts
    assert len(texts) == 1 and texts[0].startswith("ROMEO:") and len(texts[0]) == len("ROMEO:") + 25


def loss_over(module, batches) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = module.gpt(x)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count, count


@pytest.mark.slow  # trains a run
@pytest.mark.parametrize("limit", [1.0, 1])
def test_the_final_validation_reads_trainer_limit_final_batches(tiny_cfg, tmp_path, limit):
    """Periodic validations read trainer.limit_val_batches; the reported best and the test loss are measured on
    trainer.limit_final_batches of the splits: all of them by default (1.0), or that many batches (1: a quick look at
    a large corpus)."""
    from src.stages.common import build_datamodule

    cfg = tiny_cfg("trainer.limit_val_batches=1", f"trainer.limit_final_batches={limit}")
    result = train(cfg, tmp_path)
    module, dm = load_teacher(result["checkpoint"]), build_datamodule(cfg)
    whole = isinstance(limit, float)  # 1.0: the whole splits; the int 1: one batch
    val, count = loss_over(module, list(dm.val_dataloader())[: None if whole else limit])
    test, _ = loss_over(module, list(dm.test_dataloader())[: None if whole else limit])
    assert (count > cfg.data.batch_size * cfg.model.seq_len) == whole  # more than one batch only when whole
    assert result["best_val_loss"] == pytest.approx(val, rel=1e-4)
    assert result["test/loss"] == pytest.approx(test, rel=1e-4)


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


def test_adamw_is_fused_unless_the_precision_is_mixed():
    """One fused kernel per step (src/stages/common.py adamw), except under autocast, where Lightning refuses to clip
    a fused optimizer's gradients."""
    from types import SimpleNamespace

    from src.stages.common import adamw

    weight = torch.nn.Parameter(torch.zeros(3, 3))
    module = SimpleNamespace(_trainer=None)
    assert adamw(module, [{"params": [weight], "weight_decay": 0.1}], lr=1e-3).defaults["fused"]
    module._trainer = SimpleNamespace(precision="bf16-mixed")
    assert not adamw(module, [weight], lr=1e-3).defaults["fused"]


def test_flops_per_batch_counts_the_windows_trained():
    """The throughput's FLOPs are those of the batch just trained: a warm-up's or length curriculum's many short
    windows cost less attention than batch_size windows of seq_len (before any batch: those)."""
    from types import SimpleNamespace

    from src.costs.accounting import training_flops
    from src.stages.teacher import TeacherLM

    module = TeacherLM(model={"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 256}, vocab=list("abcd"),
                       optim={}, max_steps=1)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=2), barebones=True)  # no logging
    full = 2 * training_flops(32, 2, 2, 256, 4)
    assert module.flops_per_batch == full
    module.training_step((torch.zeros(8, 64, dtype=torch.long), torch.zeros(8, 64, dtype=torch.long)), 0)
    assert module.flops_per_batch == 8 * training_flops(32, 2, 2, 64, 4) < full
