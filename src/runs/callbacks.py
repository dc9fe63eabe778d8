"""The callbacks that keep a run safe (Lightning: stop on a non-finite loss, save on Ctrl-C so that the run continues
exactly, seed each step's random numbers by its step) and the one that closes a multirun (Hydra: which jobs finished,
which failed, how to gather them). Throughput is Lightning's own ThroughputMonitor (src/runs/trainer.py)."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from hydra.experimental.callback import Callback
from lightning.pytorch.trainer.states import TrainerFn
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


class SeedEachStep(L.Callback):
    """The random numbers a training step draws (dropout) come from a generator seeded with (seed, rank, step), as its
    batch does (src/data/windows.py StepBatches): a step is the same however the run got there, resumed or not, whatever
    validations (a generated sample draws too) came before it."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seed = hash((self.seed, trainer.global_rank, trainer.global_step)) % 2**63
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it queues every accelerator's seeding,
        if pl_module.device.type == "cuda":        # with a stack trace each, at every step
            torch.cuda.manual_seed(seed)


class SaveOnInterrupt(L.Callback):
    """Ctrl-C during training: the run stops at the end of the step it is in (a second Ctrl-C: at once), saves
    RUN/checkpoints/last.ckpt, and prints and logs the command that continues it (Lightning then exits with status 1).

    The continued run is the uninterrupted one, to the last digit: a step's batch depends only on the step
    (src/data/windows.py StepBatches), and the checkpoint's loop progress is set to what Lightning restores exactly
    (``settle``): the steps done, and the validation that is due after the last of them when it has not finished."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self.stop, self.previous = False, None  # Ctrl-C pressed; the SIGINT handler before ours (None: not ours)
        self.due, self.max_steps = None, None  # the step whose validation is owed; the max_steps it was owed under

    # ------------------------------------------------------------------------------------- Ctrl-C at a step's end

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.stop = False
        if stage == "fit" and self.previous is None and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.on_sigint) or signal.default_int_handler

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def on_sigint(self, signum, frame) -> None:
        """The first Ctrl-C: stop where a step (or a validation) ends -- not within an optimiser step, which would save
        half-updated weights; the second: at once."""
        if self.stop:
            self.teardown(None, None, "fit")
            raise KeyboardInterrupt
        self.stop = True
        print("\nCtrl-C: stopping at the end of this step (Ctrl-C again: at once)", file=sys.stderr, flush=True)

    def stop_here(self, trainer) -> None:
        if self.stop and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stop_here(trainer)  # the steps before are done, their validation and logging included

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # the validation runs again when the run continues; the one after the last step finishes now
        if trainer.global_step < trainer.max_steps:
            self.stop_here(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop_here(trainer)  # Ctrl-C during the last step: the final validation and test wait for resume=

    def on_fit_end(self, trainer, pl_module) -> None:
        """A run continued with no step left (Lightning skips its fit loop): the logger's step and the epoch where the
        uninterrupted run's fit left them, for the final validation and test."""
        loop = trainer.fit_loop
        if loop.epoch_loop._batches_that_stepped < trainer.global_step:
            loop.epoch_loop._batches_that_stepped = trainer.global_step
            for tracker in (loop.epoch_progress.total, loop.epoch_progress.current):
                tracker.processed = tracker.completed = tracker.ready

    # ------------------------------------------------------------------------------------- the checkpoint

    def state_dict(self) -> dict:
        return {} if self.due is None else {"validation_due": self.due}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """A validation owed after the last step: Lightning would skip a fit with no step left, so max_steps is one
        higher until that validation has run (the fit loop then ends as the uninterrupted one did)."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self.due = (checkpoint.get("callbacks") or {}).get(self.state_key, {}).get("validation_due")
        if self.due is not None and self.due >= trainer.max_steps:
            self.max_steps, trainer.fit_loop.epoch_loop.max_steps = trainer.max_steps, self.due + 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.due = None
        if self.max_steps is not None:
            trainer.fit_loop.epoch_loop.max_steps, self.max_steps = self.max_steps, None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            self.teardown(trainer, pl_module, "fit")  # Ctrl-C as before for whatever this process does next
            return
        self.previous = None  # Lightning ignores SIGINT while it shuts down (the checkpoint is not cut short)
        if (trainer.checkpoint_callback is None
                or trainer.state.fn != TrainerFn.FITTING):  # a final validation or test: last.ckpt stays as it is
            return
        if trainer.global_step == 0:
            message = "interrupted before the first step: nothing to save; start the run again (without resume=)"
        else:
            path = self.run_dir / "checkpoints" / "last.ckpt"
            self.due = trainer.global_step if settle(trainer) else None
            trainer.save_checkpoint(path)
            message = f"interrupted at step {trainer.global_step}: saved {path}\ncontinue with: {self.command}"
        print(f"\n{message}", file=sys.stderr, flush=True)
        for handler in logging.getLogger().handlers:  # the run's train.log too (the console has its line above)
            if isinstance(handler, logging.FileHandler):
                handler.handle(logging.LogRecord(log.name, logging.WARNING, __file__, 0, message, None, None))


def _set(progress, total: int, current: int, last_completed: bool) -> None:
    """Batch progress (Lightning's ready/started/processed/completed counters) of ``total`` batches in all, ``current``
    in this epoch; the last one's end (``completed``) counted or not."""
    for tracker, n in ((progress.total, total), (progress.current, current)):
        tracker.ready = tracker.started = tracker.processed = n
        tracker.completed = n if last_completed else n - 1


def settle(trainer: L.Trainer) -> bool:
    """Set the fit loop's progress to what the uninterrupted run had when its step g (= global_step) ended, in one of
    the two forms that Lightning's restart continues exactly, wherever Ctrl-C struck:

    * the step's batch done, its batch-end not counted (as a checkpoint saved in on_train_batch_end): the restart
      counts it and trains step g+1 -- a validation due after step g is taken as done;
    * a validation due after step g that did not finish: the batch counted, the logger step not (as a checkpoint
      saved at the end of a validation), the validation loop started but with no batch done: the restart runs that
      validation again (logged at the step the uninterrupted run logged it), then trains step g+1.

    Lightning alone restores ``total`` progress as it was saved, one batch ahead when Ctrl-C struck within a step
    (``current`` is set back, ``total`` not): every later validation (counted in total batches, as
    check_val_every_n_epoch=None asks) and logger step would come one step early; and it takes a validation due after
    step g as done, so a Ctrl-C before it finished loses it. Epochs hold ``num_training_batches`` steps each."""
    loop, g, per_epoch = trainer.fit_loop.epoch_loop, trainer.global_step, trainer.num_training_batches
    if not g or not math.isfinite(per_epoch):
        return False
    batches, val = loop.batch_progress, loop.val_loop.batch_progress
    finished = loop._batches_that_stepped >= g  # step g's validation and logging done (it is counted after them)
    if not finished and batches.current.processed > batches.current.completed:
        trainer._logger_connector.update_train_step_metrics()  # stopped in on_train_batch_end: the step's scalars
    epoch = (g - 1) // per_epoch
    in_epoch = g - epoch * per_epoch
    for tracker in (trainer.fit_loop.epoch_progress.total, trainer.fit_loop.epoch_progress.current):
        tracker.ready = tracker.started = epoch + 1  # within epoch `epoch`
        tracker.processed = tracker.completed = epoch
    _set(batches, g, in_epoch, last_completed=False)
    batches.is_last_batch = in_epoch == per_epoch
    loop._batches_that_stepped = g - 1
    pending = not finished and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
    if pending:
        _set(batches, g, in_epoch, last_completed=True)
        _set(val, val.total.completed, 0, last_completed=True)
        val.total.ready += 1  # one validation batch started, none done: "mid-evaluation", run from the start
        val.total.started += 1
    else:
        _set(val, val.total.completed, val.current.completed, last_completed=True)
    val.is_last_batch = False
    return pending


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
