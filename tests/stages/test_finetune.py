"""Sparse fine-tuning (src/stages/finetune.py): the model's weights learn through the sparse kernel, the selector by
its KL alone; the results before and after; bad settings in one line."""

from __future__ import annotations

import json

import pytest
import torch

from src.errors import UserError
from src.stages.finetune import SparseFineTuning
from src.train import train
from tests.conftest import compose_config

BLOCK = ["selector=block", "selector.block_size=8", "hybrid.layers=all", "hybrid.heads=all", "hybrid.budget=16"]


def module(selector: str = "block") -> SparseFineTuning:
    cfg = compose_config(["model=tiny", "model.seq_len=32", "model.n_layer=2", f"selector={selector}",
                          "selector.block_size=8", "hybrid.layers=all", "hybrid.heads=all", "hybrid.budget=16"])
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    plain = lambda g: OmegaConf.to_container(cfg[g], resolve=True)  # noqa: E731
    return SparseFineTuning(model=plain("model"), vocab=[chr(97 + i) for i in range(20)], hybrid=plain("hybrid"),
                            selector=plain("selector"), approximator=plain("approximator"), lr=1e-3,
                            max_steps=10).configure(2e-4, 1.0)


def test_the_model_learns_from_the_language_model_loss_and_the_selector_from_its_kl_alone():
    m = module()
    x = torch.randint(0, 20, (2, 33))
    m.log = lambda *a, **k: None  # outside a Trainer
    m.kl_weight = 0.0
    m.training_step((x[:, :-1], x[:, 1:]), 0).backward()
    assert all(p.grad is not None for p in m.teacher.parameters())  # through the sparse kernel
    assert all(p.grad is None for p in m.parts.selectors.parameters())  # the choice is discrete: nothing crosses
    m.zero_grad(set_to_none=True)
    m.kl_weight = 1.0
    m.training_step((x[:, :-1], x[:, 1:]), 0).backward()
    assert all(p.grad is not None for p in m.parts.selectors.parameters())
    groups = m.configure_optimizers()["optimizer"].param_groups  # the model's lr (finetune.lr), the selector's
    assert [g["lr"] for g in groups] == [2e-4, 1e-3]


@pytest.mark.slow  # trains
def test_finetune_end_to_end(tiny_cfg, tmp_path, teacher_ckpt):
    parts = [f"teacher.ckpt={teacher_ckpt}", *BLOCK, "selector.max_steps=2"]
    train(tiny_cfg("+experiment=distill_selector", *parts), tmp_path / "outputs" / "selector")
    result = train(tiny_cfg("+experiment=finetune", *parts, "finetune.max_steps=4", "evaluate.copy_windows=0"),
                   tmp_path / "finetune")
    saved = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert saved["steps"] == 4 and saved["selector_ckpt"] == result["selector_ckpt"]
    for key in ("val/teacher_loss", "val/distilled_loss", "val/finetuned_loss", "val/finetuned_dense_loss"):
        assert saved[key] > 0
    assert saved["val/finetuned_loss_change_pct"] == pytest.approx(
        100 * (saved["val/finetuned_loss"] - saved["val/teacher_loss"]) / saved["val/teacher_loss"])
    md = (tmp_path / "finetune" / "results.md").read_text()
    assert "| fine-tuned hybrid |" in md and "| distilled hybrid |" in md
    # evaluate reads the fine-tuned hybrid and compares it with the teacher it started from, not its own weights
    tuned = train(tiny_cfg("+experiment=evaluate", *parts, f"finetune.ckpt={result['checkpoint']}",
                           "evaluate.copy_windows=0"), tmp_path / "evaluate")
    plain = train(tiny_cfg("+experiment=evaluate", f"teacher.ckpt={teacher_ckpt}", "selector=window",
                           "hybrid.budget=16", "evaluate.copy_windows=0"), tmp_path / "teacher")
    assert tuned["test/teacher_loss"] == pytest.approx(plain["test/teacher_loss"], rel=1e-6)
    assert tuned["test/finetuned_dense_loss"] != pytest.approx(plain["test/teacher_loss"], rel=1e-6)
    assert "fine-tuned hybrid" in tuned["source"] and teacher_ckpt in tuned["source"]
    with pytest.raises(UserError, match=r"fine-tuned block \+ softmax hybrid .* does not fit this run: it has "
                                        r"hybrid.budget=16 \(this run: 8\)"):
        train(tiny_cfg("+experiment=evaluate", *parts, f"finetune.ckpt={result['checkpoint']}", "hybrid.budget=8"),
              tmp_path / "bad_budget")
    with pytest.raises(UserError, match="is a teacher's checkpoint, not a fine-tuned block"):
        train(tiny_cfg("+experiment=evaluate", *parts, f"finetune.ckpt={teacher_ckpt}"), tmp_path / "bad_kind")
    with pytest.raises(UserError, match="approximator=mlp is another function: use approximator=softmax"):
        train(tiny_cfg("+experiment=finetune", *parts, "approximator=mlp"), tmp_path / "mlp")
    with pytest.raises(UserError, match="finetune.kl_weight=-1.0 must be 0 or more"):
        train(tiny_cfg("+experiment=finetune", *parts, "finetune.kl_weight=-1"), tmp_path / "bad")
