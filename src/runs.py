"""Run folders and the Lightning Trainer that every stage shares: logger, checkpoints, progress bar."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from src.callbacks import TokensPerSecond
from src.errors import UserError

OUTPUT_ROOT = Path("outputs")


def run_dir_for(resume: str | None, stage: str, model_name: str) -> str:
    """Hydra resolver behind ``hydra.run.dir``: a new timestamped folder, or the folder of the run to resume."""
    if resume:
        p = Path(resume)
        if p.is_file():  # .../RUN/checkpoints/last.ckpt
            p = p.parent.parent
        return str(p)
    return str(OUTPUT_ROOT / stage / model_name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", run_dir_for)


def resume_checkpoint(resume: str | None) -> str | None:
    """``resume=RUN_DIR`` or ``resume=.../last.ckpt`` -> the checkpoint to continue from."""
    if not resume:
        return None
    p = Path(resume)
    ckpt = p if p.is_file() else p / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise UserError(
            f"resume={resume}: no checkpoint at {ckpt}; give a run folder that holds checkpoints/last.ckpt "
            "(a run that was started with `python -m src.train` and saved at least one checkpoint)"
        )
    return str(ckpt)


def build_trainer(cfg: DictConfig, run_dir: Path, monitor: str, mode: str = "min") -> L.Trainer:
    """The Trainer of every stage: TensorBoard in RUN/tensorboard, best/last checkpoints in RUN/checkpoints."""
    t, d = cfg.trainer, cfg.device
    callbacks: list[L.Callback] = [TokensPerSecond(every_n_steps=t.log_every)]
    logger = False
    if not t.fast_dev_run:
        logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False)
        callbacks += [
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                save_last=True,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            LearningRateMonitor(logging_interval="step"),
        ]
    return L.Trainer(
        accelerator=d.accelerator,
        devices=d.devices,
        strategy=d.strategy,
        num_nodes=d.num_nodes,
        precision=d.precision,
        max_steps=t.max_steps,
        val_check_interval=min(t.val_every, t.max_steps),  # so that the last steps are validated too
        check_val_every_n_epoch=None,  # count validation intervals in steps, across epochs
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every,
        gradient_clip_val=cfg.optim.grad_clip or None,
        fast_dev_run=t.fast_dev_run,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=True,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )


def scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        v = float(v)
        out[k] = v if math.isfinite(v) else None
    return out


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
