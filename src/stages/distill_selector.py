"""Stage 2: distil a key selector from the frozen teacher, for every sparse (layer, head).

Teacher-forced: each batch runs the teacher, which hands over the sparse layers' inputs, Q, K and attention
probabilities; the selector learns to score keys so that its causal top-K covers what the teacher attends to.
Losses (``selector.loss``): ``ce`` the teacher's top-1 key (the prototype), ``topk`` its top-K set (multi-label),
``kl`` KL(teacher attention ‖ softmax of the selector's scores) (the lightning indexer's and SeerAttention's).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from src.errors import UserError
from src.metrics import selection_stats
from src.runs import build_trainer, saved_checkpoint, scalar_metrics, stage_spec, write_json
from src.selectors import causal_topk, selection_mask
from src.selectors.base import causal_mask
from src.stages.hybrid_module import HybridModule, datamodule_for, hybrid_hparams, resolve_teacher

log = logging.getLogger(__name__)

LOSSES = ("ce", "topk", "kl")


def selector_loss(kind: str, scores: torch.Tensor, probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """scores, probs (B, h, T, T) -> scalar loss; keys after the query never count."""
    T = scores.size(-1)
    future = causal_mask(T, scores.device)
    if kind == "topk":  # multi-label: is this key among the teacher's top-K?
        target = selection_mask(causal_topk(probs, top_k), T).float()
        weight = (~future).float().expand_as(scores)
        return F.binary_cross_entropy_with_logits(scores, target, weight=weight, reduction="sum") / weight.sum()
    logq = scores.masked_fill(future, float("-inf")).log_softmax(-1)
    if kind == "ce":  # the prototype: the teacher's strongest key
        return -logq.gather(-1, probs.argmax(-1, keepdim=True)).mean()
    # kl: sum_j p log(p / q) over the causal keys (p = 0 above the diagonal contributes nothing)
    logp = probs.clamp_min(1e-12).log()
    return (probs * (logp - logq.masked_fill(future, 0.0))).sum(-1).mean()


class SelectorDistillation(HybridModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sel = self.hparams.selector
        self.loss_kind = sel.get("loss") or next(iter(self.parts.selectors.values())).default_loss
        if self.loss_kind not in LOSSES:
            raise UserError(f"selector.loss={self.loss_kind!r} is unknown: use one of {', '.join(LOSSES)}")
        self.val_metrics = self.per_head_metrics(["top1_acc", "recall", "mass_recall"])

    def training_step(self, batch, batch_idx):
        x, _ = batch
        _, signals = self.teacher_signals(x)
        losses = []
        for layer, s in signals.items():
            q, k, _, probs, _ = self.served(s)
            scores = self.parts.selectors[str(layer)].scores(s.x, q, k)
            losses.append(selector_loss(self.loss_kind, scores, probs, self.spec.top_k))
        loss = torch.stack(losses).mean()
        self.log("train/selector_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        _, signals = self.teacher_signals(x)
        stats = []
        for layer, s in signals.items():
            sel = self.select(layer, s)
            stats.append(selection_stats(sel, self.served(s)[3]))
            self.keep_figure_input(s, sel)
        self.update_per_head(self.val_metrics, stats)

    def on_validation_epoch_end(self) -> None:
        values = self.log_per_head("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            log.info("step %d: selector mass recall %.4f, recall@%d %.4f, top-1 %.4f", self.global_step,
                     values["val/mass_recall"], self.spec.top_k, values["val/recall"], values["val/top1_acc"])
        self.log_figure()

    def configure_optimizers(self):
        return self.adamw(self.parts.selectors.parameters())


def fit_or_measure(module: HybridModule, trainable: bool, trainer: L.Trainer, dm, run_dir: Path) -> tuple[str, dict]:
    """Train when there is something to train; measure on the validation split either way; save the checkpoint."""
    if trainable:
        trainer.fit(module, datamodule=dm)
    checkpoint = saved_checkpoint(trainer, run_dir) if trainable else None
    metrics = trainer.validate(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
    if not trainable:  # nothing learned: the checkpoint is the teacher plus the fixed parts
        checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
        trainer.save_checkpoint(checkpoint)
    return checkpoint, scalar_metrics(metrics[0] if metrics else {})


def run(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    teacher, teacher_ckpt = resolve_teacher(cfg)
    dm = datamodule_for(cfg, teacher.vocab, f"teacher {teacher_ckpt}")
    module = SelectorDistillation(**hybrid_hparams(cfg, teacher, teacher_ckpt, cfg.selector.lr, cfg.selector.max_steps))
    module.teacher.load_state_dict(teacher.gpt.state_dict())
    log.info("selector %s (loss %s) for layers %s heads %s, top-%d; teacher %s", cfg.selector.name,
             module.loss_kind, list(module.spec.layers), list(module.spec.heads), module.spec.top_k, teacher_ckpt)
    steps = cfg.selector.max_steps
    trainer = build_trainer(cfg, run_dir, monitor="val/mass_recall", mode="max", max_steps=steps,
                            val_every=max(1, steps // 2))
    checkpoint, metrics = fit_or_measure(module, module.selector_learned, trainer, dm, run_dir)
    result = {
        "stage": "distill_selector",
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "teacher_ckpt": teacher_ckpt,
        "spec": stage_spec(cfg, "distill_selector"),
        "fast_dev_run": bool(cfg.trainer.fast_dev_run),
        "steps": trainer.global_step,
        **metrics,
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result
