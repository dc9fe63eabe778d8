"""The run of a distillation stage (src/stages/distill_selector.py, distill_approximator.py): the teacher it starts
from and its data, training the stage's part of the hybrid (or, with nothing to learn, measuring it), the checkpoint
that validation picks, and RUN/metrics.json."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from src.errors import UserError
from src.runs.commands import command_for
from src.runs.lookup import checkpoint_for, spec
from src.runs.records import scalar_metrics, write_json
from src.runs.resume import resume_point
from src.runs.trainer import build_trainer, saved_checkpoint
from src.stages.common import build_datamodule
from src.stages.hybrid_module import HybridModule


def load_selector(cfg: DictConfig, module: HybridModule) -> dict:
    """Load into ``module`` the trained selector it works with (nothing for a parameter-free one): ``selector.ckpt``,
    or the newest one distilled with these settings from a teacher of the same data -> {"selector_ckpt": path}."""
    selector_ckpt = None
    if module.selector_learned or cfg.selector.ckpt:
        make = command_for("distill_selector", cfg)
        selector_ckpt, ckpt = checkpoint_for(cfg, "distill_selector", make, vocab=module.vocab.itos)
        selectors = {k.removeprefix("parts.selectors."): v for k, v in ckpt["state_dict"].items()
                     if k.startswith("parts.selectors.")}
        try:
            module.parts.selectors.load_state_dict(selectors)
        except RuntimeError:
            raise UserError(f"the weights in {selector_ckpt} do not fit the {cfg.selector.name} selector of this "
                            f"version (made by an older one?): make a new one with `{make}`") from None
    return {"selector_ckpt": selector_ckpt}


def fit_or_measure(module: HybridModule, trainable: bool, trainer: L.Trainer, dm, run_dir: Path,
                   resume: str | None = None) -> tuple[str, dict]:
    """Train when there is something to train (continuing from the checkpoint ``resume``); measure on the
    validation split either way; save the checkpoint."""
    if trainable:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
    checkpoint = saved_checkpoint(trainer, run_dir) if trainable else None
    metrics = trainer.validate(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
    if not trainable:  # nothing learned: the checkpoint is the teacher plus the fixed parts
        checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
        trainer.save_checkpoint(checkpoint)
    return checkpoint, scalar_metrics(metrics[0] if metrics else {})


def distil(cfg: DictConfig, run_dir: Path, stage: str, cls: type[HybridModule], part: str, monitor: str, mode: str,
           prepare=None) -> dict:
    """The run of a distillation stage, which trains the ``part`` ("selector" or "approximator", with ``part``.lr
    and .max_steps) of the hybrid module ``cls``: the teacher (``teacher.ckpt`` or the newest that fits) and its
    data, ``prepare(module)`` -- what the stage starts from, returning more result fields --, training (or, with
    nothing to learn, measuring), the checkpoint that ``monitor`` picks, and RUN/metrics.json."""
    L.seed_everything(cfg.seed, workers=True)
    resume = resume_point(cfg, run_dir, stage)
    path, teacher = checkpoint_for(cfg, "teacher", command_for("teacher", cfg))
    dm = build_datamodule(cfg, (path, teacher))
    settings = cfg[part]
    module = cls.from_teacher(cfg, path, teacher, settings.lr, settings.max_steps)
    extra = prepare(module) if prepare else {}
    trainable = module.selector_learned if part == "selector" else module.approximator_learned
    trainer = build_trainer(cfg, run_dir, monitor=monitor, mode=mode, max_steps=settings.max_steps,
                            val_every=max(1, settings.max_steps // 2), lr_setting=f"{part}.lr")
    checkpoint, metrics = fit_or_measure(module, trainable, trainer, dm, run_dir, resume[0] if resume else None)
    result = {"stage": stage, "run_dir": str(run_dir), "checkpoint": checkpoint, "teacher_ckpt": path, **extra,
              "spec": spec(cfg, stage), "fast_dev_run": bool(cfg.trainer.fast_dev_run), "steps": trainer.global_step,
              **metrics}
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result
