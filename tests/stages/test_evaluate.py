"""The distillation stages and evaluation on tiny settings, one fast_dev_run per stage and selector + approximator pair;
the messages when what they need is missing."""

from __future__ import annotations

import json
import math

from pathlib import Path

import pytest
import torch

from src.approximators import APPROXIMATORS
from src.errors import UserError
from src.runs.records import read_json
from src.selectors import SELECTORS
from src.train import train


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


def in_range(value: float, low: float, high: float | None = None) -> bool:
    return math.isfinite(value) and low <= value and (high is None or value <= high)


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
    run = tmp_path / "run"
    result = train(cfg, run)
    assert result["stage"] == experiment
    assert read_json(run / "metrics.json") == json.loads(json.dumps(result))  # the result, as recorded
    heads = ["L0H0", "L1H0"]  # hybrid.layers=all over the 2 tiny layers, head 0
    if experiment == "evaluate":
        assert (run / "results.md").is_file() and (run / "results.json").is_file()
        assert read_json(run / "results.json")["test/hybrid_loss"] == result["test/hybrid_loss"]
        for split in ("test", "val"):
            assert in_range(result[f"{split}/hybrid_loss"], 0.01) and in_range(result[f"{split}/teacher_loss"], 0.01)
            assert in_range(result[f"{split}/mass_recall"], 1e-6, 1.0 + 1e-6)
            assert in_range(result[f"{split}/approx_rel_err"], 0.0)
            assert all(in_range(result[f"{split}/mass_recall/{h}"], 1e-6, 1.0 + 1e-6) for h in heads)
        md = (run / "results.md").read_text()
        assert f"# Hybrid vs teacher: {selector} selector + {approximator} approximator" in md
        for key in ("test/teacher_loss", "test/hybrid_loss", "val/hybrid_loss", "test/mass_recall",
                    "test/approx_rel_err"):
            assert f"{result[key]:.4f}" in md, key
        assert all(f"| {h} |" in md for h in heads)
        return
    # a distillation stage: a checkpoint of the whole hybrid, asked-for parts, the part trained for fast_dev_run's step
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["selector"]["name"] == selector and hp["approximator"]["name"] == approximator
    assert hp["hybrid"]["layers"] == "all" and hp["hybrid"]["top_k"] == 4
    assert any(k.startswith("teacher.") for k in ckpt["state_dict"])
    part = SELECTORS[selector] if experiment == "distill_selector" else APPROXIMATORS[approximator]
    assert result["steps"] == (1 if part.trainable else 0)  # nothing to learn: measured, not trained
    if experiment == "distill_selector":
        assert in_range(result["val/mass_recall"], 1e-6, 1.0 + 1e-6)
        assert all(in_range(result[f"val/mass_recall/{h}"], 1e-6, 1.0 + 1e-6) for h in heads)
        assert in_range(result["val/recall"], 0.0, 1.0 + 1e-6)
    else:
        assert in_range(result["val/approx_rel_err"], 0.0) and in_range(result["val/hybrid_loss"], 0.01)
        assert all(in_range(result[f"val/approx_rel_err/{h}"], 0.0) for h in heads)
        w1 = [v for k, v in ckpt["state_dict"].items() if k.startswith("parts.approximators.") and k.endswith("w1")]
        head_dim = hp["model"]["d_model"] // hp["model"]["n_head"]
        if approximator == "mlp":  # one per sparse layer, over top_k = 4 selected values
            assert len(w1) == 2 and all(w.shape[1] == 4 * head_dim for w in w1)


def test_missing_selector_and_hybrid_messages(tiny_cfg, tmp_path, teacher_ckpt):
    with pytest.raises(UserError, match=r"no trained mlp selector .* \+experiment=distill_selector"):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector=mlp"), tmp_path)
    with pytest.raises(UserError, match=r"no trained indexer \+ softmax hybrid .* \+experiment=pipeline"):
        train(tiny_cfg("+experiment=evaluate", f"teacher.ckpt={teacher_ckpt}", "selector=indexer"), tmp_path)


def test_a_kernel_that_cannot_run_a_hybrid_names_the_one_that_can(tiny_cfg, tmp_path, teacher_ckpt, trained_parts):
    """Evaluating an mlp + mlp hybrid on the masked kernel (exact softmax only): the parts are the checkpoint's, so
    the fix is the kernel -- and the fix it names runs."""
    parts = ["selector=mlp", "approximator=mlp", "hybrid.layers=all", "hybrid.top_k=4"]
    _, hybrid = trained_parts(tuple(parts))
    common = ["+experiment=evaluate", f"teacher.ckpt={teacher_ckpt}", f"approximator.ckpt={hybrid}", *parts,
              "evaluate.limit_batches=1", "evaluate.time_forward=false", "evaluate.validation=false"]
    with pytest.raises(UserError, match=r"hybrid.kernel=masked computes exact softmax attention, but approximator=mlp "
                                        r"is another function: evaluate the hybrid .* with hybrid.kernel=auto") as e:
        train(tiny_cfg(*common, "hybrid.kernel=masked"), tmp_path / "refused")
    assert "approximator=softmax" not in str(e.value)  # not a fix: the checkpoint's approximator is mlp
    assert train(tiny_cfg(*common, "hybrid.kernel=auto"), tmp_path / "run")["test/hybrid_loss"] > 0


@pytest.mark.slow  # trains a pipeline
@pytest.mark.parametrize("selector", ["indexer", "query_block_oracle"])
def test_recall_and_copy_probes_in_the_results(tiny_cfg, tmp_path, selector):
    """On data=recall, evaluate reports the test episodes recalled (per task and depth) and the copy probe, for the
    teacher and the hybrid on the same texts, in results.json and results.md (the per-query oracle generates too:
    it is causal)."""
    result = train(tiny_cfg("+experiment=pipeline", "data=recall", "data.tasks=[passkey]", "model.seq_len=128",
                            "data.test_episodes=2", "selector.max_steps=2", "hybrid.budget=16",
                            f"selector={selector}", "selector.block_size=8",
                            "evaluate.copy_windows=2", "trainer.limit_final_batches=2", "evaluate.limit_batches=2"),
                   tmp_path / "run")
    e = result["evaluate"]
    for model in ("teacher", "hybrid"):
        assert 0 <= e[f"test/{model}_recall/passkey"] <= 1 and 0 <= e[f"test/{model}_recall/passkey/d0.9"] <= 1
        assert 0 <= e[f"test/{model}_recall/passkey_greedy/d0.9"] <= 1  # generated through the cache
        assert e[f"test/{model}_copy/g50"] > 0  # T = 128: passages of 32, 50 apart
    teacher = result["teacher"]  # its probes, kept in its run folder, read again by the evaluation
    assert len(list(Path(teacher["run_dir"], "probes").glob("*.json"))) == 1
    probes = lambda r: {k: v for k, v in r.items() if k.startswith(("test/teacher_recall", "test/teacher_copy"))}  # noqa: E731
    assert probes(e) == probes(teacher) and len(probes(e)) > 10
    md = (tmp_path / "run" / "results.md").read_text()
    assert "## Recall episodes" in md and "| passkey, depth 0.1 |" in md and "## Copy probe" in md
