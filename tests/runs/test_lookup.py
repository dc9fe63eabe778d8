"""Finding a stage's checkpoint and whether it fits (src/runs/lookup.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from src.errors import UserError
from src.runs.lookup import find
from src.runs.records import write_json
from src.train import train
from tests.conftest import copy_run


def test_a_diverged_teacher_stops_and_is_never_used(tiny_cfg, tmp_path):
    """optim.lr=1e6 without warm-up: one line at the first non-finite loss; no metrics.json, so no later stage or
    search picks it up."""
    run = tmp_path / "outputs" / "teacher" / "nan"
    with pytest.raises(UserError, match="the training loss became (nan|inf) at step .*: training diverged; lower "
                                        "optim.lr"):
        train(tiny_cfg("optim.lr=1e6", "optim.warmup_steps=0", "trainer.max_steps=30"), run)
    assert not (run / "metrics.json").exists()
    assert find(tiny_cfg(), "teacher") is None


def test_a_teacher_without_a_finite_loss_is_not_found(tiny_cfg, tmp_path, teacher_run):
    """A run folder whose metrics.json records no finite validation loss (NaN is written as null) is skipped."""
    good = tmp_path / "outputs" / "teacher" / "good"
    write_json(good / "metrics.json", teacher_run)
    bad = tmp_path / "outputs" / "teacher" / "bad"
    (bad / "checkpoints").mkdir(parents=True)
    (bad / "checkpoints" / "best.ckpt").write_bytes(b"x")
    write_json(bad / "metrics.json", {**teacher_run,
                                      "checkpoint": str(bad / "checkpoints" / "best.ckpt"),
                                      "best_val_loss": float("nan")})
    assert json.loads((bad / "metrics.json").read_text())["best_val_loss"] is None  # valid JSON: null, not NaN
    assert find(tiny_cfg(), "teacher") == teacher_run["checkpoint"]


def test_newest_compatible_teacher_is_found(tiny_cfg, tmp_path, teacher_run):
    """The newest finished teacher with this run's model and data, whatever else lies under paths.outputs."""
    outputs = tmp_path / "outputs" / "teacher"
    older = copy_run(Path(teacher_run["run_dir"]), outputs / "older")
    newer = copy_run(Path(teacher_run["run_dir"]), outputs / "newer")
    other = copy_run(Path(teacher_run["run_dir"]), outputs / "other")
    for run in (older, newer, other):
        write_json(run / "metrics.json", {**teacher_run, "checkpoint": str(run / "checkpoints" / "best.ckpt")})
    os.utime(older / "checkpoints" / "best.ckpt", (1, 1))
    spec = json.loads((other / "metrics.json").read_text())["spec"]
    write_json(other / "metrics.json", {**teacher_run, "checkpoint": str(other / "checkpoints" / "best.ckpt"),
                                        "spec": {**spec, "model": {**spec["model"], "n_layer": 1}}})  # another size
    assert find(tiny_cfg(), "teacher") == str(newer / "checkpoints" / "best.ckpt")
    assert find(tiny_cfg("model.n_layer=1"), "teacher") == str(other / "checkpoints" / "best.ckpt")
    assert find(tiny_cfg("model.sparse=moba"), "teacher") is None  # a dense teacher is not a natively sparse one
    write_json(other / "metrics.json", {**teacher_run, "checkpoint": str(other / "checkpoints" / "best.ckpt"),
                                        "spec": {**spec, "model": {**spec["model"], "sparse": "moba",
                                                                   "sparse_budget": 16, "sparse_block": 8,
                                                                   "sparse_layers": "all"}}})
    assert find(tiny_cfg("model.sparse=moba", "model.sparse_budget=16", "model.sparse_block=8"),
                "teacher") == str(other / "checkpoints" / "best.ckpt")
    assert find(tiny_cfg("model.sparse=moba", "model.sparse_budget=32", "model.sparse_block=8"), "teacher") is None
    result = train(tiny_cfg("+experiment=distill_selector", "selector.max_steps=2"), tmp_path / "run")
    assert result["teacher_ckpt"] == str(newer / "checkpoints" / "best.ckpt")


def test_no_teacher_message(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match=r"no trained teacher .* `python -m src.train \+experiment=teacher model=tiny"):
        train(tiny_cfg("+experiment=distill_selector"), tmp_path)


def test_teacher_checkpoint_of_the_wrong_kind(tiny_cfg, tmp_path, teacher_ckpt):
    sel = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
                         "hybrid.top_k=4"), tmp_path / "s")
    with pytest.raises(UserError, match=r"is a distilled selector's or hybrid's checkpoint, not a teacher's"):
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
    with pytest.raises(UserError, match=r"oracle \+ mlp hybrid .* does not fit this run: it has model.n_head=2 "
                                        r"\(this run: 4\)"):
        train(tiny_cfg("+experiment=evaluate", *parts, "model.n_head=4", f"approximator.ckpt={a['checkpoint']}"),
              tmp_path / "e")


def test_mismatched_selector_checkpoint(tiny_cfg, tmp_path, teacher_ckpt):
    """A selector trained with the top-K loss depends on K; with KL (the default) it serves any budget."""
    sel = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
                         "hybrid.top_k=4", "selector.loss=topk"), tmp_path / "s")
    with pytest.raises(UserError, match=r"indexer selector .* does not fit this run: it has hybrid.top_k=4 "
                                        r"\(this run: 5\)"):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector.loss=topk",
                       f"selector.ckpt={sel['checkpoint']}", "hybrid.top_k=5"), tmp_path / "a")
    with pytest.raises(UserError, match=r"it has hybrid.layers=\[0\] \(this run: \[1\]\)"):
        train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}", "selector.loss=topk",
                       f"selector.ckpt={sel['checkpoint']}", "hybrid.top_k=4", "hybrid.layers=[1]"), tmp_path / "b")
    kl = train(tiny_cfg("+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}", "selector.max_steps=2",
                        "hybrid.top_k=4"), tmp_path / "k")
    reused = train(tiny_cfg("+experiment=distill_approximator", f"teacher.ckpt={teacher_ckpt}",
                            f"selector.ckpt={kl['checkpoint']}", "hybrid.top_k=5"), tmp_path / "c")
    assert reused["selector_ckpt"] == kl["checkpoint"]


def test_the_training_mix_is_part_of_a_teachers_data_spec():
    """A teacher trained on another mix (repeated text, far needles) is another teacher; the defaults leave the spec
    of the runs made before these settings unchanged."""
    from src.runs.lookup import data_spec
    from tests.conftest import compose_config

    plain = data_spec(compose_config(["data=recall"]))
    assert not {"repeat_text", "depth_power", "dictionary", "gap_power"} & set(plain)
    mixed = data_spec(compose_config(["data=recall", "data.repeats=0.3", "data.repeat_text=0.5",
                                      "data.depth_power=2", "data.dictionary=0.2", "data.gap_power=2"]))
    assert mixed == {**plain, "repeats": 0.3, "repeat_text": 0.5, "depth_power": 2.0, "dictionary": 0.2,
                     "gap_power": 2.0}
