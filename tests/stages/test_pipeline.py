"""The pipeline (src/stages/pipeline.py): all five steps, the prototype's results file."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.train import train


@pytest.mark.slow  # trains a run
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


@pytest.mark.slow  # trains
def test_a_named_selector_is_used_not_distilled_again(tiny_cfg, tmp_path, teacher_ckpt, caplog):
    """selector.ckpt (a budget curve's jobs, a sweep over budgets) skips the selector's distillation: the pipeline
    uses that checkpoint once it fits the run, and says so."""
    from tests.conftest import PARTS

    selector = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", *PARTS),
                     tmp_path / "selector")
    result = train(tiny_cfg("+experiment=pipeline", f"teacher.ckpt={teacher_ckpt}", *PARTS,
                            f"selector.ckpt={selector['checkpoint']}", "hybrid.layers=[0]", "hybrid.heads=[0]",
                            "evaluate.copy_windows=0", "evaluate.time_forward=false"), tmp_path / "pipeline")
    assert result["selector"]["checkpoint"] == selector["checkpoint"]
    assert result["approximator"]["selector_ckpt"] == selector["checkpoint"]
    assert not (tmp_path / "pipeline" / "selector").exists()


@pytest.mark.slow  # trains
def test_reuse_takes_a_selector_of_the_same_settings_and_steps(tiny_cfg, tmp_path, teacher_ckpt):
    """pipeline.reuse (the budget curve's jobs): a selector distilled from the same teacher with the same settings is
    reused at another budget; one distilled for another number of steps is not."""
    from tests.conftest import PARTS

    common = [f"teacher.ckpt={teacher_ckpt}", *PARTS, "hybrid.layers=[0]", "hybrid.heads=[0]", "pipeline.reuse=true",
              "evaluate.copy_windows=0", "evaluate.time_forward=false", "approximator=softmax"]
    first = train(tiny_cfg("+experiment=pipeline", *common), tmp_path / "outputs" / "a")
    again = train(tiny_cfg("+experiment=pipeline", *common, "hybrid.budget=8"), tmp_path / "outputs" / "b")
    assert again["selector"]["checkpoint"] == first["selector"]["checkpoint"]
    assert not (tmp_path / "outputs" / "b" / "selector").exists()
    longer = train(tiny_cfg("+experiment=pipeline", *common, "selector.max_steps=3"), tmp_path / "outputs" / "c")
    assert longer["selector"]["checkpoint"] != first["selector"]["checkpoint"] and longer["selector"]["steps"] == 3
