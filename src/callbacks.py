"""Small Lightning callbacks shared by the stages."""

from __future__ import annotations

import time

import lightning as L


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
