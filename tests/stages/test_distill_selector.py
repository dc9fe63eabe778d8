"""The selector stage (src/stages/distill_selector.py): its losses, bad input, block selectors."""

from __future__ import annotations

import pytest
import torch

from src.errors import UserError
from src.stages.distill_selector import block_selector_loss, selector_loss
from src.train import train


def test_selector_losses():
    probs = torch.softmax(torch.randn(1, 2, 6, 6).masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf")), -1)
    logits = probs.clamp_min(1e-12).log()
    assert selector_loss("kl", logits, probs, 2) == pytest.approx(0.0, abs=1e-5)
    assert selector_loss("kl", torch.zeros_like(logits), probs, 2) > 0.01
    assert selector_loss("ce", logits * 50, probs, 2) < selector_loss("ce", torch.zeros_like(logits), probs, 2)
    assert torch.isfinite(selector_loss("topk", torch.randn(1, 2, 6, 6), probs, 2))


@pytest.mark.parametrize(
    "overrides,msg",
    [
        (["teacher.ckpt=/nonexistent/best.ckpt"], r"no teacher checkpoint at .*\+experiment=teacher"),
        (["model.d_model=64"], r"does not fit this run: it has model.d_model=128 \(this run: 64\)"),
        (["model.seq_len=16"], r"seq_len=32 \(this run: 16\)"),
        (["data.vocab_size=10"], r"trained on other data than data=synthetic: it has a vocabulary of 64 symbols"),
        (["hybrid.top_k=0"], "hybrid.top_k=0 must be a positive"),
        (["hybrid.top_k=-2"], "must be a positive"),
        (["hybrid.top_k=33"], "larger than the sequence length"),
        (["hybrid.heads=[5]"], "hybrid.heads"),
        (["selector.loss=mse"], "selector.loss='mse' is unknown"),
    ],
)
def test_bad_distillation_input(tiny_cfg, tmp_path, teacher_ckpt, overrides, msg):
    ovr = [f"teacher.ckpt={teacher_ckpt}"] + [o for o in overrides if not o.startswith("teacher.ckpt")]
    if any(o.startswith("teacher.ckpt") for o in overrides):
        ovr = overrides
    with pytest.raises(UserError, match=msg):
        train(tiny_cfg("+experiment=distill_selector", *ovr), tmp_path)


def test_block_stages_end_to_end(tiny_cfg, tmp_path, teacher_ckpt):
    """selector -> approximator -> evaluation with the block selector, evaluated on the flex kernel."""
    parts = [f"teacher.ckpt={teacher_ckpt}", "selector=block", "selector.block_size=8", "hybrid.layers=all",
             "hybrid.budget=16"]
    sel = train(tiny_cfg("+experiment=distill_selector", *parts, "selector.max_steps=2"), tmp_path / "outputs" / "s")
    assert 0 < sel["val/mass_recall"] <= 1 + 1e-6
    app = train(tiny_cfg("+experiment=distill_approximator", *parts, f"selector.ckpt={sel['checkpoint']}"),
                tmp_path / "outputs" / "a")
    result = train(tiny_cfg("+experiment=evaluate", *parts, "hybrid.kernel=flex",
                            f"approximator.ckpt={app['checkpoint']}"), tmp_path / "e")
    assert result["test/hybrid_loss"] > 0 and 0 < result["test/mass_recall"] <= 1 + 1e-6
    md = (tmp_path / "e" / "results.md").read_text()
    assert "budget 16 keys per query, kernel flex (2 blocks of 8 keys" in md


def test_token_losses_are_refused_for_blocks(tiny_cfg, tmp_path, teacher_ckpt):
    from src.errors import UserError
    with pytest.raises(UserError, match="selector.loss=ce ranks single keys; selector=block keeps whole blocks"):
        train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector=block",
                       "selector.loss=ce", "selector.block_size=8"), tmp_path / "s")


def test_the_weighted_block_loss_is_refused_for_token_selectors(tiny_cfg, tmp_path, teacher_ckpt):
    from src.errors import UserError
    with pytest.raises(UserError, match="selector.loss=kl_full weighs the teacher's mass per block; selector=indexer"):
        train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector=indexer",
                       "selector.loss=kl_full"), tmp_path / "s")


def test_the_losses_stay_finite_under_bf16():
    """Under bf16 autocast (device.precision=auto on a CPU that multiplies bf16) the teacher's mass and the scores
    come in bf16, where a query's own-block share clamped to 1 - 1e-6 rounds to 1: the losses run in fp32."""

    torch.manual_seed(0)
    scores = torch.randn(1, 2, 64, 8).bfloat16()
    mass = torch.zeros(1, 2, 64, 8)
    own = torch.arange(64) // 8
    mass.scatter_(-1, own.view(1, 1, -1, 1).expand(1, 2, 64, 1), 1.0)  # every query on its own block alone
    assert torch.isfinite(block_selector_loss(scores, mass.bfloat16(), own))
    probs = torch.eye(16).expand(1, 2, 16, 16).bfloat16()
    assert torch.isfinite(selector_loss("kl", torch.randn(1, 2, 16, 16).bfloat16(), probs, 4))
