"""The distillation stages, evaluation and the pipeline on tiny settings; each bad input's message."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


from src.errors import UserError
from src.metrics import selection_stats
from src.sparse import causal_topk
from src.stages.distill_selector import selector_loss
from src.train import train


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A tiny teacher (a few real steps, so it leaves best.ckpt) shared by the tests of this file."""
    from tests.conftest import TINY, compose_config

    run = tmp_path_factory.mktemp("teacher")
    return train(compose_config(TINY), run)["checkpoint"]


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Runs found by 'the newest compatible ... under outputs/' come from this test's folder only."""
    monkeypatch.setattr(src.runs, "OUTPUT_ROOT", tmp_path / "outputs")


@pytest.fixture(scope="module")
def trained_parts(teacher_ckpt, tmp_path_factory):
    """A selector (2 steps) and an approximator on it (2 steps) per selector + approximator pair, each trained once
    for the whole file: ``trained_parts(parts) -> (selector ckpt, approximator ckpt)``."""
    from tests.conftest import TINY, compose_config

    cache: dict = {}

    def get(parts: tuple[str, ...]) -> tuple[str, str]:
        if parts not in cache:
            root = tmp_path_factory.mktemp("parts")
            common = [*TINY, f"teacher.ckpt={teacher_ckpt}", *parts]
            sel = train(compose_config([*common, "+experiment=distill_selector", "selector.max_steps=2"]), root / "s")
            app = train(compose_config([*common, "+experiment=distill_approximator", "approximator.max_steps=2",
                                        f"selector.ckpt={sel['checkpoint']}"]), root / "a")
            cache[parts] = sel["checkpoint"], app["checkpoint"]
        return cache[parts]

    return get


@pytest.mark.parametrize("experiment", ["distill_selector", "distill_approximator", "evaluate"])
@pytest.mark.parametrize("selector,approximator", [("indexer", "softmax"), ("oracle", "softmax"), ("mlp", "mlp")])
def test_stage_fast_dev_run(tiny_cfg, tmp_path, teacher_ckpt, trained_parts, experiment, selector, approximator):
    parts = [f"selector={selector}", f"approximator={approximator}", "hybrid.layers=all", "hybrid.top_k=4"]
    cfg = tiny_cfg(f"+experiment={experiment}", f"teacher.ckpt={teacher_ckpt}", "trainer.fast_dev_run=true", *parts)
    if experiment != "distill_selector" and selector != "oracle":  # needs the selector stage's output first
        selector_ckpt, approximator_ckpt = trained_parts(tuple(parts))
        cfg.selector.ckpt = selector_ckpt
        if experiment == "evaluate":
            cfg.approximator.ckpt = approximator_ckpt
    result = train(cfg, tmp_path / "run")
    assert result["stage"] == experiment
    if experiment == "evaluate":
        assert 0.0 <= result["test/mass_recall"] <= 1.0 + 1e-6 and result["test/hybrid_loss"] > 0
        assert (tmp_path / "run" / "results.md").is_file()


def test_pipeline_fast_dev_run(tiny_cfg, tmp_path):
    result = train(tiny_cfg("+experiment=pipeline", "trainer.fast_dev_run=true"), tmp_path)
    assert {"teacher", "selector", "approximator", "evaluate"} <= result.keys()
    assert (tmp_path / "results.md").is_file()


@pytest.mark.slow
def test_prototype_pipeline_results(tiny_cfg, tmp_path):
    """The prototype's design end to end (mlp + mlp), with the results file and the attention picture."""
    result = train(tiny_cfg("+experiment=prototype", "model.seq_len=32", "trainer.max_steps=4",
                            "selector.max_steps=4", "approximator.max_steps=4"), tmp_path)
    text = (tmp_path / "evaluate" / "results.md").read_text()
    assert "[result] relative error (final logits, hybrid vs teacher):" in text
    assert "KeySelector top-1 accuracy" in text and "prototype: 9.2%" in text
    saved = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert saved["test/logits_rel_err"] == pytest.approx(result["evaluate"]["test/logits_rel_err"])
    assert saved["config"]["hybrid"] == {"layers": [0], "heads": [0], "top_k": 3, "budget": None, "kernel": "auto",
                                               "mass": None}
    assert "test/top1_acc/L0H0" in saved
    images = EventAccumulator(str(tmp_path / "selector" / "tensorboard")).Reload().Tags()["images"]
    assert any(t.startswith("attention/") for t in images)


def test_newest_compatible_teacher_is_found(tiny_cfg, tmp_path):
    first = train(tiny_cfg(), tmp_path / "outputs" / "teacher" / "a")
    other = train(tiny_cfg("model.n_layer=1"), tmp_path / "outputs" / "teacher" / "b")  # another size: skipped
    result = train(tiny_cfg("+experiment=distill_selector", "selector.max_steps=2"), tmp_path / "run")
    assert result["teacher_ckpt"] == first["checkpoint"] != other["checkpoint"]


def test_no_teacher_message(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match=r"no trained teacher .* `python -m src.train \+experiment=teacher model=tiny"):
        train(tiny_cfg("+experiment=distill_selector"), tmp_path)


@pytest.mark.parametrize(
    "overrides,msg",
    [
        (["teacher.ckpt=/nonexistent/best.ckpt"], r"no teacher checkpoint at .*\+experiment=teacher"),
        (["model.d_model=64"], r"does not fit model=tiny: it has d_model=128 \(this run: 64\)"),
        (["model.seq_len=16"], r"seq_len=32 \(this run: 16\)"),
        (["data.vocab_size=10"], "another vocabulary"),
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


def test_missing_selector_and_hybrid_messages(tiny_cfg, tmp_path, teacher_ckpt):
    with pytest.raises(UserError, match=r"no trained mlp selector .* \+experiment=distill_selector"):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector=mlp"), tmp_path)
    with pytest.raises(UserError, match=r"no trained indexer \+ softmax hybrid .* \+experiment=pipeline"):
        train(tiny_cfg("+experiment=evaluate", f"teacher.ckpt={teacher_ckpt}", "selector=indexer"), tmp_path)


def test_mismatched_selector_checkpoint(tiny_cfg, tmp_path, teacher_ckpt):
    """A selector trained with the top-K loss depends on K; with KL (the default) it serves any budget."""
    sel = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
                         "hybrid.top_k=4", "selector.loss=topk"), tmp_path / "s")
    with pytest.raises(UserError, match="was made with hybrid="):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector.loss=topk",
                       f"selector.ckpt={sel['checkpoint']}", "hybrid.top_k=5"), tmp_path / "a")
    with pytest.raises(UserError, match="was made with hybrid="):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector.loss=topk",
                       f"selector.ckpt={sel['checkpoint']}", "hybrid.top_k=4", "hybrid.layers=[1]"), tmp_path / "b")
    kl = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
                        "hybrid.top_k=4"), tmp_path / "k")
    reused = train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}",
                            f"selector.ckpt={kl['checkpoint']}", "hybrid.top_k=5"), tmp_path / "c")
    assert reused["selector_ckpt"] == kl["checkpoint"]


def test_selection_metrics_of_the_oracle():
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 10, 10).tril().clamp_min(1e-6).tril()
    probs = probs / probs.sum(-1, keepdim=True)
    for k in (1, 4, 10):
        stats = selection_stats(causal_topk(probs, k), probs)
        for name in ("top1_acc", "recall"):
            num, den = stats[name]
            torch.testing.assert_close(num / den, torch.ones(3))
        mass = stats["mass_recall"][0] / stats["mass_recall"][1]
        assert torch.all(mass <= 1 + 1e-6) and (k < 10 or torch.allclose(mass, torch.ones(3)))


def test_selection_metrics_by_hand():
    probs = torch.tensor([[1.0, 0, 0], [0.3, 0.7, 0], [0.5, 0.1, 0.4]])[None, None]
    sel = causal_topk(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1.0]])[None, None], 2)
    stats = {k: float(n / d) for k, (n, d) in selection_stats(sel, probs).items()}
    # query 0: key 0 (all mass); query 1: keys 0, 1 (all); query 2: keys 2, then 0 or 1 (tie at 0)
    # top-1: query 0 right; query 1 picks key 0 first, the teacher key 1; query 2 picks key 2, the teacher key 0
    assert stats["top1_acc"] == pytest.approx(1 / 3)
    assert stats["recall"] == pytest.approx((1 + 1 + (1 if sel.idx[0, 0, 2, 1] == 0 else 0.5)) / 3)
    assert stats["mass_recall"] == pytest.approx((1 + 1 + 0.4 + (0.5 if sel.idx[0, 0, 2, 1] == 0 else 0.1)) / 3)


def test_selector_losses():
    probs = torch.softmax(torch.randn(1, 2, 6, 6).masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf")), -1)
    logits = probs.clamp_min(1e-12).log()
    assert selector_loss("kl", logits, probs, 2) == pytest.approx(0.0, abs=1e-5)
    assert selector_loss("kl", torch.zeros_like(logits), probs, 2) > 0.01
    assert selector_loss("ce", logits * 50, probs, 2) < selector_loss("ce", torch.zeros_like(logits), probs, 2)
    assert torch.isfinite(selector_loss("topk", torch.randn(1, 2, 6, 6), probs, 2))


def test_teacher_checkpoint_of_the_wrong_kind(tiny_cfg, tmp_path, teacher_ckpt):
    sel = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
                         "hybrid.top_k=4"), tmp_path / "s")
    with pytest.raises(UserError, match=r"is a selector or hybrid checkpoint .* not a teacher's"):
        train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={sel['checkpoint']}"), tmp_path / "x")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"cannot read checkpoint .*junk.ckpt.*\+experiment=teacher"):
        train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={junk}"), tmp_path / "y")


def test_hybrid_checkpoint_of_another_model(tiny_cfg, tmp_path, teacher_ckpt):
    """evaluate must not run a checkpoint made for another model shape (it would report the wrong config)."""
    parts = ["selector=oracle", "approximator=mlp", "hybrid.top_k=4"]
    a = train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", *parts,
                       "approximator.max_steps=2"), tmp_path / "a")
    with pytest.raises(UserError, match=r"trained for another model: n_head=2 \(this run: 4\)"):
        train(tiny_cfg("+experiment=evaluate", *parts, "model.n_head=4", f"approximator.ckpt={a['checkpoint']}"),
              tmp_path / "e")
