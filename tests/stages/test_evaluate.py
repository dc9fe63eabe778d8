"""The distillation stages and evaluation on tiny settings, one fast_dev_run per stage and selector + approximator pair; the messages when what they need is missing."""

from __future__ import annotations

import pytest

from src.errors import UserError
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


def test_missing_selector_and_hybrid_messages(tiny_cfg, tmp_path, teacher_ckpt):
    with pytest.raises(UserError, match=r"no trained mlp selector .* \+experiment=distill_selector"):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector=mlp"), tmp_path)
    with pytest.raises(UserError, match=r"no trained indexer \+ softmax hybrid .* \+experiment=pipeline"):
        train(tiny_cfg("+experiment=evaluate", f"teacher.ckpt={teacher_ckpt}", "selector=indexer"), tmp_path)
