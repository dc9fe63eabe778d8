"""Stage 3: distil a head approximator, given the trained selectors, for every sparse (layer, head).

Teacher-forced like stage 2: the selector (frozen) picks keys from the teacher's own Q and K, and the approximator
learns to turn the selected keys and values into the teacher's head output (MSE). The checkpoint it writes is the
whole hybrid: teacher, selectors and approximators.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchmetrics import MeanMetric

from src.metrics import approximation_stats
from src.stages.distill import distil, load_selector
from src.stages.hybrid_module import HybridModule

log = logging.getLogger(__name__)


class ApproximatorDistillation(HybridModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.parts.selectors.requires_grad_(False)
        self.val_metrics = self.per_head_metrics(["approx_mse", "approx_rel_err"])
        self.val_hybrid_loss = MeanMetric()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        signals = self.layer_signals(x)
        losses = []
        for layer, s in signals.items():
            with torch.no_grad():
                sel = self.select(layer, s)
            losses.append(F.mse_loss(self.approximate(layer, s, sel), self.served(s).head_out))
        loss = torch.stack(losses).mean()
        self.log("train/approx_mse", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.update_layers(self.val_metrics, self.layer_signals(x), lambda layer, s, sel: approximation_stats(
            self.approximate(layer, s, sel), self.served(s).head_out))
        logits = self.hybrid_logits(x)
        self.val_hybrid_loss.update(F.cross_entropy(logits.flatten(0, 1), y.flatten()), weight=y.numel())

    def on_validation_epoch_end(self) -> None:
        values = self.log_per_head("val", self.val_metrics)
        hybrid_loss = float(self.val_hybrid_loss.compute())
        self.val_hybrid_loss.reset()
        self.log("val/hybrid_loss", hybrid_loss, prog_bar=True)
        if not self.trainer.sanity_checking:
            log.info("step %d: approximator relative error %.4f, hybrid val loss %.4f", self.global_step,
                     values["val/approx_rel_err"], hybrid_loss)

    def configure_optimizers(self):
        return self.adamw(self.parts.approximators.parameters())


def run(cfg: DictConfig, run_dir: Path) -> dict:
    def prepare(module: ApproximatorDistillation) -> dict:
        found = load_selector(cfg, module)
        log.info("approximator %s over the %s budget of the %s selector (%s)", cfg.approximator.name,
                 module.spec.budget, cfg.selector.name, found["selector_ckpt"] or "nothing to load")
        return found

    return distil(cfg, run_dir, "distill_approximator", ApproximatorDistillation, "approximator",
                  "val/approx_rel_err", "min", prepare)
