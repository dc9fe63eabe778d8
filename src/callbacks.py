"""Small Lightning callbacks shared by the stages (throughput is Lightning's own ThroughputMonitor, src/runs.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L

from src.errors import UserError


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
