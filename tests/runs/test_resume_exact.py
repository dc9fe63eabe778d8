"""Resume is exact across a validation (src/runs/callbacks.py SaveOnInterrupt and ``settle``): a run stopped by Ctrl-C
-- after a step, within one, during a validation, or by a real SIGINT -- and continued with ``resume=`` validates at
the same steps, logs the same training loss at every step and ends with the same best validation and test loss as
the same run without the interruption, to the last digit."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import src.stages.distill
import src.stages.teacher
from src.train import train
from tests.conftest import tiny

pytestmark = pytest.mark.slow  # trains every case twice

RUN = ("trainer.max_steps=12", "trainer.val_every=4")  # validations after steps 4, 8 and 12


class Interrupt(L.Callback):
    """Ctrl-C once, at global step ``at``: ``end`` after that step (before the validation due after it), ``within``
    inside the next step (its backward: Lightning's batch count one ahead), ``validation`` during the validation after
    it, ``sigint`` a real SIGINT after it (the first Ctrl-C, which stops where a step ends)."""

    def __init__(self, when: str, at: int):
        self.when, self.at, self.fired = when, at, False

    def fire(self, trainer, *when: str) -> None:
        if self.fired or self.when not in when or trainer.global_step != self.at:
            return
        self.fired = True
        if self.when == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, *args) -> None:
        self.fire(trainer, "end", "sigint")

    def on_before_backward(self, trainer, *args) -> None:
        self.fire(trainer, "within")

    def on_validation_batch_end(self, trainer, *args) -> None:
        if not trainer.sanity_checking:
            self.fire(trainer, "validation")


@pytest.fixture(autouse=True)
def sigint_as_before():
    """Lightning ignores SIGINT from an interrupted run on; the test session gets its Ctrl-C back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def scalars(run, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point of ``tag`` in RUN/tensorboard, all event files of the run (each part's)."""
    events = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=False).Reload()
    return sorted((e.step, e.value) for e in events.Scalars(tag))


def interrupted_and_resumed(monkeypatch, stage, make_cfg, run, when: str, at: int) -> dict:
    """Run ``make_cfg()`` in ``run`` with Ctrl-C at step ``at`` (``stage``: the module whose build_trainer to
    wrap), then continue it with resume=; the continued run's result."""
    build = stage.build_trainer

    def interrupted(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(Interrupt(when, at))
        return trainer

    monkeypatch.setattr(stage, "build_trainer", interrupted)
    with pytest.raises(SystemExit):
        train(make_cfg(), run)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == at
    monkeypatch.setattr(stage, "build_trainer", build)
    return train(make_cfg(f"resume={run}"), run)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The teacher run without an interruption: its result and folder."""
    root = tmp_path_factory.mktemp("whole")
    result = train(tiny(root / "outputs", *RUN), root / "run")
    # the validations after 4, 8 and 12 steps log at Lightning's step 3, 7, 11; the final one (best.ckpt) at 12
    assert [step for step, _ in scalars(root / "run", "val/loss")] == [3, 7, 11, 12]
    return result, root / "run"


@pytest.mark.parametrize("when,at", [
    ("end", 5),  # just after a validation
    ("end", 8),  # at a validation step, before its validation
    ("end", 9),  # just after
    ("within", 7),  # inside the step that a validation follows
    ("validation", 8),  # during a validation
    ("sigint", 8),  # a real Ctrl-C at a validation step
    ("end", 12),  # the last step, before its validation
])
def test_a_resumed_teacher_is_the_uninterrupted_one(whole, tmp_path, monkeypatch, when, at):
    result, whole_run = whole
    run = tmp_path / "run"
    resumed = interrupted_and_resumed(monkeypatch, src.stages.teacher,
                                      lambda *extra: tiny(tmp_path / "outputs", *RUN, *extra), run, when, at)
    assert resumed["steps"] == 12
    assert scalars(run, "val/loss") == scalars(whole_run, "val/loss")  # the same steps, the same values
    assert scalars(run, "train/loss") == scalars(whole_run, "train/loss")  # each step once, the same value
    assert (resumed["best_val_loss"], resumed["test/loss"]) == (result["best_val_loss"], result["test/loss"])


def test_a_resumed_distillation_is_the_uninterrupted_one(teacher_ckpt, tmp_path, monkeypatch):
    """The distillation stages run through the same Trainer: a selector stopped at its validation step 4 of 8."""
    def make_cfg(*extra):
        return tiny(tmp_path / "outputs", "+experiment=distill_selector", f"teacher.ckpt={teacher_ckpt}",
                    "selector.max_steps=8", *extra)

    result = train(make_cfg(), tmp_path / "whole")
    resumed = interrupted_and_resumed(monkeypatch, src.stages.distill, make_cfg, tmp_path / "run", "end", 4)
    for tag in ("val/mass_recall", "train/selector_loss"):
        assert scalars(tmp_path / "run", tag) == scalars(tmp_path / "whole", tag)
    same = {k: v for k, v in result.items() if k not in ("run_dir", "checkpoint")}
    assert {k: v for k, v in resumed.items() if k not in ("run_dir", "checkpoint")} == same
