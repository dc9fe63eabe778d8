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

from src.errors import UserError
from src.metrics import approximation_stats
from src.runs.commands import command_for
from src.runs.lookup import checkpoint_for
from src.stages.distill import distil
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
    def load_selector(module: ApproximatorDistillation) -> dict:
        """The trained selector this approximator learns to work with (nothing to load for a parameter-free one):
        ``selector.ckpt``, or the newest one distilled with these settings from a teacher of the same data."""
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
        log.info("approximator %s over the %s budget of the %s selector (%s)", cfg.approximator.name,
                 module.spec.budget, cfg.selector.name, selector_ckpt or "nothing to load")
        return {"selector_ckpt": selector_ckpt}

    return distil(cfg, run_dir, "distill_approximator", ApproximatorDistillation, "approximator",
                  "val/approx_rel_err", "min", load_selector)
