"""The Lightning Trainer that every stage shares: the precision (device.precision, ``auto`` resolved by
src/config.py and logged in one line), TensorBoard logger, best/last checkpoints, throughput, the learning-rate
monitor, and the callbacks that keep a run safe and its resume exact (src/runs/callbacks.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from src.config import resolve_precision
from src.runs.callbacks import SaveOnInterrupt, SeedEachStep, StopOnNonFinite
from src.runs.resume import resume_command

log = logging.getLogger(__name__)


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    monitor: str | None,
    mode: str = "min",
    max_steps: int | None = None,
    val_every: int | None = None,
    lr_setting: str = "optim.lr",
) -> L.Trainer:
    """The Trainer of every stage: TensorBoard in RUN/tensorboard, best/last checkpoints in RUN/checkpoints.

    ``monitor`` names the validation metric that picks best.ckpt (None: no checkpoints, e.g. evaluation);
    ``max_steps`` / ``val_every`` override ``trainer.*`` for stages with budgets of their own; ``lr_setting`` is
    the learning rate to name when the loss diverges.
    """
    t, d = cfg.trainer, cfg.device
    precision, why = resolve_precision(d.precision, d.accelerator)
    log.info("precision %s, %s", precision, why)
    max_steps = t.max_steps if max_steps is None else max_steps
    val_every = t.val_every if val_every is None else val_every
    callbacks: list[L.Callback] = [StopOnNonFinite(lr_setting), SeedEachStep(cfg.seed)]
    if t.enable_progress_bar:  # redrawn every log_every steps (redrawn at every step, it took 4 ms of the baby
        callbacks.append(TQDMProgressBar(refresh_rate=t.log_every))  # model's 55 ms step at T = 64, one thread)
    logger = False
    if not t.fast_dev_run:
        if monitor:  # first: a Ctrl-C stops at a step's start before anything logs for that step
            callbacks.append(SaveOnInterrupt(run_dir, resume_command(run_dir)))
        # train/device/items_per_sec: tokens per second, over the last log_every steps (data loading included)
        callbacks.append(ThroughputMonitor(batch_size_fn=lambda batch: batch[0].size(0),
                                           length_fn=lambda batch: batch[0].numel(), window_size=max(2, t.log_every)))
        logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        if monitor:
            callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor,
                                             mode=mode, save_top_k=1, save_last=True, auto_insert_metric_name=False,
                                             enable_version_counter=False))
    return L.Trainer(
        accelerator=d.accelerator, devices=d.devices, strategy=d.strategy, num_nodes=d.num_nodes,
        precision=precision,
        max_steps=max_steps,
        val_check_interval=max(1, min(val_every, max_steps)),  # so that the last steps are validated too
        check_val_every_n_epoch=None,  # count validation intervals in steps, across epochs
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every,
        gradient_clip_val=cfg.optim.grad_clip or None,
        fast_dev_run=t.fast_dev_run,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=True,
        enable_checkpointing=bool(monitor) and not t.fast_dev_run,
        use_distributed_sampler=False,  # the DataModule shares the data out itself (src/data/windows.py: exact resume)
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )


def saved_checkpoint(trainer: L.Trainer, run_dir: Path) -> str:
    """The checkpoint a stage hands on: best.ckpt when validation picked one, else the final weights (saved now).

    Even a fast_dev_run leaves one, so that a pipeline can chain its stages in a smoke test; ``find`` never offers
    a fast_dev_run's checkpoint to a later run.
    """
    cb = trainer.checkpoint_callback
    if cb is not None and cb.best_model_path:
        return cb.best_model_path
    path = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return str(path)
