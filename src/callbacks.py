"""Small Lightning callbacks shared by the stages."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import lightning as L

from src.errors import UserError


class TokensPerSecond(L.Callback):
    """Logs ``train/tokens_per_sec``: tokens of the batch (all devices) over the wall time of the step."""

    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = every_n_steps
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None or trainer.global_step % self.every_n_steps:
            return
        tokens = batch[0].numel() * trainer.world_size
        pl_module.log("train/tokens_per_sec", tokens / (time.perf_counter() - self._t0), on_step=True)


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
    saved -- and the command that continues the run is printed (Lightning then exits with status 1)."""

    def __init__(self, run_dir: Path, command: str):
        self.run_dir, self.command = Path(run_dir), command

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.checkpoint_callback is None:
            return
        path = self.run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path)
        print(f"\ninterrupted at step {trainer.global_step}: saved {path}\ncontinue with: {self.command}",
              file=sys.stderr, flush=True)
