"""The callbacks that keep a run safe (Lightning: stop on a non-finite loss, save on Ctrl-C) and the one that closes a
multirun (Hydra: which jobs finished, which failed, how to gather them). Throughput is Lightning's own
ThroughputMonitor (src/runs/trainer.py)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import lightning as L
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.runs.folders import RECORD, job_folders
from src.runs.records import read_json

log = logging.getLogger(__name__)


class StopOnNonFinite(L.Callback):
    """Ends training at the first NaN or infinite training loss, with one line (src.errors.UserError): a diverged
    run must not go on, save NaN weights, or pass as finished (it writes no metrics.json, so no later stage finds
    it)."""

    def __init__(self, lr_setting: str = "optim.lr"):
        self.lr_setting = lr_setting

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise UserError(f"the training loss became {float(loss)} at step {trainer.global_step}: training "
                            f"diverged; lower {self.lr_setting} (or raise optim.warmup_steps) and run again")


class SaveOnInterrupt(L.Callback):
    """Ctrl-C during training: the steps since the last validation are not lost -- RUN/checkpoints/last.ckpt is
    saved -- and the command that continues the run is printed and logged (Lightning then exits with status 1)."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.checkpoint_callback is None:
            return
        path = self.run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path)
        message = f"interrupted at step {trainer.global_step}: saved {path}\ncontinue with: {self.command}"
        print(f"\n{message}", file=sys.stderr, flush=True)
        for handler in logging.getLogger().handlers:  # the run's train.log too (the console has its line above)
            if isinstance(handler, logging.FileHandler):
                handler.handle(logging.LogRecord(log.name, logging.WARNING, __file__, 0, message, None, None))


def next_step(root: Path, jobs: list[Path]) -> str:
    """How to look at a finished multirun: the analysis that fits its jobs (a budget curve, a sweep of pipelines),
    else TensorBoard over every job."""
    configs = [OmegaConf.load(p / RECORD / "config.yaml") for p in jobs]
    if any(c.get("stage") == "pipeline" for c in configs):
        analysis = "budget" if any("curve" in c for c in configs) else "sweep"
        return f"gather the results: python -m src.analyze {analysis} {root}"
    return f"each job's results are in its metrics.json; compare them with: tensorboard --logdir {root}"


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, one line per job (finished or failed) and how to look at them;
    the multirun exits with status 1 when a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        jobs = job_folders(root)
        failed = [p for p in jobs if (p / "error.json").is_file()]
        print(f"\nsweep {root}: {len(jobs)} jobs, {len(jobs) - len(failed)} finished, {len(failed)} failed", flush=True)
        for p in failed:
            error = (read_json(p / "error.json") or {}).get("error") or "see its train.log"
            print(f"  failed: {p.name}: {str(error).splitlines()[0]}", flush=True)
        print(next_step(root, jobs), flush=True)
        if failed:  # the sweep's exit status says so, for scripts and CI
            raise SystemExit(1)
