"""Sparse fine-tuning: the distilled hybrid trained end to end *through* its sparse kernel (``+experiment=finetune``).

Distillation leaves the teacher's weights as they were: they never saw a dropped key. Here they learn with the
language-model loss of the hybrid -- every weight of the model, the gradients flowing through the block-sparse kernel
(``tiles`` / ``query_tiles`` on the CPU, flex on CUDA) -- while the selector is kept aligned with its own loss, the
KL to the dense attention's block mass of the current weights on detached inputs (DeepSeek V3.2's second stage: the
indexer learns only from that KL, the model only from the language-model loss; the choice itself is discrete, so no
gradient crosses between them). The model's learning rate is ``finetune.lr`` (a tenth of the teacher's by default),
the selector's ``selector.lr``; ``finetune.max_steps`` steps, warm-up then cosine, resumable like every stage.

It starts from the teacher and, for a learned selector, its distilled selector (``selector.ckpt`` or the newest that
fits; a parameter-free one -- window, moba -- needs none), with exact softmax over the chosen keys
(``approximator=softmax``). Before training it measures, on the validation split, the teacher and the distilled-only
hybrid; after, the fine-tuned hybrid and the fine-tuned weights run dense: RUN/metrics.json and RUN/results.md give
the loss change against the teacher before and after, and, where the data has recall episodes (``data=recall``),
the accuracy of each.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchmetrics import MeanMetric, Metric

from src.config import hf_teacher, resolve_device
from src.errors import UserError
from src.runs.commands import command_for
from src.runs.lookup import checkpoint_for, spec
from src.runs.records import scalar_metrics, write_json
from src.runs.resume import resume_point
from src.runs.trainer import build_trainer, saved_checkpoint
from src.stages.common import adamw, build_datamodule, warmup_cosine
from src.stages.distill import load_selector
from src.stages.distill_selector import SelectorDistillation
from src.stages.probes import probe_results

log = logging.getLogger(__name__)


class SparseFineTuning(SelectorDistillation):
    """The hybrid with every weight trainable: the model by the language-model loss through the sparse kernel, the
    selector by its KL to the dense attention (``kl_weight``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher.requires_grad_(True)  # the model's weights learn too (HybridModule freezes them)
        self.model_lr, self.kl_weight = self.hparams.lr, 1.0  # set by ``configure`` from finetune.*
        self.val_hybrid, self.val_dense = MeanMetric(), MeanMetric()

    def configure(self, model_lr: float, kl_weight: float) -> SparseFineTuning:
        self.model_lr, self.kl_weight = model_lr, kl_weight
        return self

    def setup(self, stage: str) -> None:
        """A kernel that cannot train on this device (flex has no CPU backward) fails now, in one line."""
        for attention in self.attention.values():
            problem = attention.sparse.problem_on(self.device, needs_grad=stage == "fit")
            if problem:
                raise UserError(problem)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.hybrid_logits(x).flatten(0, 1), y.flatten())  # through the sparse kernel
        self.log("train/loss", loss, prog_bar=True)
        if self.kl_weight and self.selector_learned:  # the dense attention of the current weights, detached
            kl = torch.stack([self.loss(layer, s) for layer, s in self.layer_signals(x).items()]).mean()
            self.log("train/selector_loss", kl)
            loss = loss + self.kl_weight * kl
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        n = y.numel()
        self.val_hybrid.update(F.cross_entropy(self.hybrid_logits(x).flatten(0, 1), y.flatten()), weight=n)
        self.val_dense.update(F.cross_entropy(self.teacher(x).flatten(0, 1), y.flatten()), weight=n)
        super().validation_step(batch, batch_idx)  # the selector's mass recall against the current attention

    def on_validation_epoch_end(self) -> None:
        hybrid, dense = float(self.val_hybrid.compute()), float(self.val_dense.compute())
        self.val_hybrid.reset(), self.val_dense.reset()
        self.log("val/hybrid_loss", hybrid, prog_bar=True)
        self.log("val/dense_loss", dense)
        if not self.trainer.sanity_checking:
            log.info("step %d: hybrid val loss %.4f, the same weights dense %.4f", self.global_step, hybrid, dense)
        super().on_validation_epoch_end()

    def configure_optimizers(self):
        groups = [{"params": list(self.teacher.parameters()), "lr": self.model_lr}]
        if self.selector_learned:
            groups.append({"params": list(self.parts.selectors.parameters()), "lr": self.hparams.lr})
        opt = adamw(self, groups, weight_decay=0.0)
        steps = self.hparams.max_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, max(1, steps // 10), steps, 1.0, 0.1))  # a factor of each group's lr
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def measure(trainer: L.Trainer, module: SparseFineTuning, dm, cfg: DictConfig, names: tuple[str, str],
            ckpt: str | None = None) -> dict[str, float]:
    """Validation losses and the probes (recall episodes, copy) of the hybrid and its weights run dense, named
    ``names`` (hybrid, dense): e.g. {"val/distilled_loss": ..., "test/distilled_recall/passkey": ...}."""
    metrics = scalar_metrics((trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False) or [{}])[0])
    for metric in module.modules():  # their states, reset under validation's inference mode, could not train after
        if isinstance(metric, Metric):
            metric.reset()
    module.eval()
    device = next(module.parameters()).device
    probes = probe_results(cfg, {names[0]: (module.teacher, module.attention), names[1]: (module.teacher, None)}, dm,
                           device)
    return {f"val/{names[0]}_loss": metrics["val/hybrid_loss"], f"val/{names[1]}_loss": metrics["val/dense_loss"],
            **probes}


def finetune_markdown(cfg: DictConfig, r: dict) -> str:
    """RUN/results.md: the loss change against the teacher before and after fine-tuning, and recall where measured."""
    rows = [("teacher (dense)", r["val/teacher_loss"]), ("distilled hybrid", r["val/distilled_loss"]),
            ("fine-tuned hybrid", r["val/finetuned_loss"]),
            ("fine-tuned weights, dense", r["val/finetuned_dense_loss"])]
    lines = [f"# Sparse fine-tuning: {cfg.selector.name} at budget {r['budget']}, {r['steps']} steps", "",
             "Validation loss (nats/char) and its change against the dense teacher.", "",
             "| model | val loss | change |", "| --- | ---: | ---: |"]
    teacher = r["val/teacher_loss"]
    lines += [f"| {name} | {loss:.4f} | {100 * (loss - teacher) / teacher:+.2f} % |" for name, loss in rows]
    recall = [k for k in r if "_recall/" in k and k.count("/") == 2]
    if recall:
        lines += ["", "Recall episodes answered exactly (teacher-forced; passkey_greedy: generated via the KV cache):",
                  "", "| model | task | share |",
                  "| --- | --- | ---: |"]
        lines += [f"| {k.split('/')[1].removesuffix('_recall')} | {k.split('/')[2]} | {r[k]:.1%} |" for k in recall]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    if hf_teacher(cfg):
        raise UserError("+experiment=finetune trains the project's own GPT through its sparse kernel; a Hugging Face "
                        "teacher (teacher=hf) stays frozen: distil and evaluate it (+experiment=pipeline)")
    resume = resume_point(cfg, run_dir, "finetune")
    path, teacher = checkpoint_for(cfg, "teacher", command_for("teacher", cfg))
    dm = build_datamodule(cfg, (path, teacher))
    module = SparseFineTuning.from_teacher(cfg, path, teacher, cfg.selector.lr, cfg.finetune.max_steps)
    if not getattr(module.parts.approximators[str(module.spec.layers[0])], "exact_softmax", False):
        raise UserError(f"finetune trains the model through exact softmax over the chosen keys, but approximator="
                        f"{cfg.approximator.name} is another function: use approximator=softmax")
    module.configure(cfg.finetune.lr, cfg.finetune.kl_weight)
    found = load_selector(cfg, module)
    log.info("fine-tuning the %s hybrid (budget %s, layers %s, heads %s) through its sparse kernel: model lr %g, "
             "selector lr %g, KL weight %g; teacher %s, selector %s", cfg.selector.name, module.spec.budget,
             list(module.spec.layers), list(module.spec.heads), cfg.finetune.lr, cfg.selector.lr,
             cfg.finetune.kl_weight, path, found["selector_ckpt"] or "parameter-free")
    steps = cfg.finetune.max_steps
    trainer = build_trainer(cfg, run_dir, monitor="val/hybrid_loss", mode="min", max_steps=steps,
                            val_every=max(1, steps // 2), lr_setting="finetune.lr")
    before = measure(trainer, module, dm, cfg, ("distilled", "teacher"))
    trainer.fit(module, datamodule=dm, ckpt_path=resume[0] if resume else None)
    checkpoint = saved_checkpoint(trainer, run_dir)
    after = measure(trainer, module, dm, cfg, ("finetuned", "finetuned_dense"), checkpoint)
    teacher_loss = before["val/teacher_loss"]
    change = {f"val/{name}_loss_change_pct": 100 * (after.get(f"val/{name}_loss", before.get(f"val/{name}_loss"))
                                                    - teacher_loss) / teacher_loss
              for name in ("distilled", "finetuned")}
    result = {"stage": "finetune", "run_dir": str(run_dir), "checkpoint": checkpoint, "teacher_ckpt": path, **found,
              "spec": spec(cfg, "finetune"), "fast_dev_run": bool(cfg.trainer.fast_dev_run),
              "steps": trainer.global_step, "budget": str(module.spec.budget), **before, **after, **change,
              "device": str(resolve_device(cfg.device.accelerator))}
    log.info("loss change against the teacher: %+.2f %% distilled, %+.2f %% fine-tuned",
             change["val/distilled_loss_change_pct"], change["val/finetuned_loss_change_pct"])
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
        (run_dir / "results.md").write_text(finetune_markdown(cfg, result))
    return result
