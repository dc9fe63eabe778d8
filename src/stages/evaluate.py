"""Stage 4: evaluate the hybrid against its teacher on the test split; write results.md and results.json.

Quality of the whole model (both run on the same batches): the teacher's and the hybrid's loss and perplexity,
the change in loss, KL(teacher ‖ hybrid) of the next-token distributions and the relative error of the final
logits (the prototype's headline metric). Per sparse head, teacher-forced: selector top-1 accuracy, recall@K,
attention-mass recall, the density of keys actually read (mean and spread: the dynamic budget's), approximator
MSE and relative error. Speed of the whole model (``evaluate.time_forward``): the teacher's forward (SDPA) against
the hybrid's on each kernel that can serve it, on one test batch, in tokens per second, at the run's precision (bf16
autocast under bf16-mixed, as the stages run).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric

from src.approximators import APPROXIMATORS
from src.bench.speed import forward_speed
from src.costs.accounting import flops_columns
from src.config import resolve_device
from src.errors import UserError
from src.metrics import PerHeadRatio, approximation_stats
from src.model import GPT
from src.runs.checkpoints import read_checkpoint
from src.runs.commands import command_for
from src.runs.lookup import checkpoint_for, spec
from src.runs.records import write_json
from src.runs.trainer import build_trainer
from src.selectors import SELECTORS
from src.sparse import KERNELS, kernel_problem
from src.stages.common import build_datamodule, gpt_config, teacher_weights
from src.stages.hybrid_module import HybridModule
from src.stages.probes import probe_results
from src.stages.results import results_markdown

log = logging.getLogger(__name__)


class HybridEvaluation(HybridModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_metrics = self.per_head_metrics(["top1_acc", "recall", "mass_recall", "density", "density_sq",
                                                   "approx_mse", "approx_rel_err"])
        self.teacher_loss, self.hybrid_loss, self.kl = MeanMetric(), MeanMetric(), MeanMetric()
        self.logits_rel_err = PerHeadRatio(1, sqrt=True)
        self.results: dict[str, float] = {}
        # a fine-tuned hybrid (finetune.ckpt): its own weights are self.teacher; the teacher it is compared with, the
        # one it was fine-tuned from, is ``reference`` (``with_reference``), and its weights run dense are measured too
        self.reference: GPT | None = None
        self.dense_loss = MeanMetric()

    def with_reference(self, path: str) -> HybridEvaluation:
        """Compare with the teacher checkpoint at ``path`` (the one a fine-tuning started from) instead of this
        hybrid's own weights run dense."""
        ckpt = read_checkpoint(path, "teacher", "the fine-tuned hybrid's teacher is needed to compare with: name "
                               "another with finetune.ckpt, or fine-tune again", stage="teacher")
        reference = GPT(gpt_config(dict(ckpt["hyper_parameters"]["model"]), len(self.vocab)))
        reference.load_state_dict(teacher_weights(ckpt))
        self.reference = reference.requires_grad_(False).eval()
        return self

    def evaluate_batch(self, batch, keep_figure: bool) -> None:
        x, y = batch
        teacher_logits, signals = self.teacher_signals(x)
        hybrid_logits = self.hybrid_logits(x)
        n = y.numel()
        if self.reference is not None:  # fine-tuned: its weights dense, and the teacher it started from
            self.dense_loss.update(F.cross_entropy(teacher_logits.flatten(0, 1), y.flatten()), weight=n)
            teacher_logits = self.reference(x)
        self.teacher_loss.update(F.cross_entropy(teacher_logits.flatten(0, 1), y.flatten()), weight=n)
        self.hybrid_loss.update(F.cross_entropy(hybrid_logits.flatten(0, 1), y.flatten()), weight=n)
        logp_t, logp_h = teacher_logits.log_softmax(-1), hybrid_logits.log_softmax(-1)
        self.kl.update((logp_t.exp() * (logp_t - logp_h)).sum(-1).mean(), weight=n)
        self.logits_rel_err.update((hybrid_logits - teacher_logits).pow(2).sum()[None],
                                   teacher_logits.pow(2).sum()[None])
        def stats(layer: int, s, sel) -> dict:
            if keep_figure:
                self.keep_figure_input(s, sel)
            return {**self.selection_stats(layer, s, sel),
                    **approximation_stats(self.approximate(layer, s, sel), self.served(s).head_out)}

        self.update_layers(self.head_metrics, signals, stats)

    def validation_step(self, batch, batch_idx):
        self.evaluate_batch(batch, keep_figure=False)

    def test_step(self, batch, batch_idx):
        self.evaluate_batch(batch, keep_figure=True)

    def finish(self, split: str) -> None:
        """The split's metrics: logged, and added to ``self.results`` under ``split/``."""
        teacher, hybrid = float(self.teacher_loss.compute()), float(self.hybrid_loss.compute())
        whole = {
            f"{split}/teacher_loss": teacher,
            f"{split}/hybrid_loss": hybrid,
            f"{split}/teacher_ppl": float(torch.tensor(teacher).exp()),
            f"{split}/hybrid_ppl": float(torch.tensor(hybrid).exp()),
            f"{split}/loss_change_pct": 100.0 * (hybrid - teacher) / teacher,
            f"{split}/kl_teacher_hybrid": float(self.kl.compute()),
            f"{split}/logits_rel_err": float(self.logits_rel_err.compute()),
        }
        if self.reference is not None:
            whole[f"{split}/finetuned_dense_loss"] = float(self.dense_loss.compute())
        for m in (self.teacher_loss, self.hybrid_loss, self.kl, self.logits_rel_err, self.dense_loss):
            m.reset()
        for key, value in whole.items():
            self.log(key, value)
        heads = self.log_per_head(split, self.head_metrics)
        heads[f"{split}/density_std"] = max(0.0, heads[f"{split}/density_sq"] - heads[f"{split}/density"] ** 2) ** 0.5
        self.results.update({**whole, **heads})

    def on_validation_epoch_end(self) -> None:
        self.finish("val")

    def on_test_epoch_end(self) -> None:
        self.finish("test")
        self.log_figure()


def load_hybrid(cfg: DictConfig) -> tuple[HybridEvaluation, str, tuple[str, dict]]:
    """The hybrid to evaluate, what it was loaded from (for results.md) and that checkpoint (path, dict): a
    distill_approximator checkpoint (``approximator.ckpt`` or the newest that fits), with this run's kernel, dynamic
    budget and recent blocks (the same trained parts); with nothing to train, the teacher and the fixed parts; a
    fine-tuned hybrid (``finetune.ckpt``) against the teacher it was fine-tuned from."""
    finetuned = bool(cfg.get("finetune") and cfg.finetune.ckpt)
    needs_training = SELECTORS[cfg.selector.name].trainable or APPROXIMATORS[cfg.approximator.name].trainable
    if not needs_training and not cfg.approximator.ckpt and not finetuned:
        path, ckpt = checkpoint_for(cfg, "teacher", command_for("teacher", cfg))
        return HybridEvaluation.from_teacher(cfg, path, ckpt), f"teacher {path}", (path, ckpt)
    stage = "finetune" if finetuned else "distill_approximator"
    make = command_for(stage, cfg)
    path, ckpt = checkpoint_for(cfg, stage, make)
    hp = ckpt["hyper_parameters"]
    sel, app = hp["selector"]["name"], hp["approximator"]["name"]
    problem = kernel_problem(cfg.hybrid.kernel, SELECTORS[sel], APPROXIMATORS[app], sel, app)
    if problem:  # the parts are the checkpoint's: only the kernel can change
        raise UserError(f"{problem.split(': use ')[0]}: evaluate the hybrid {path} with hybrid.kernel=auto, which "
                        "picks a kernel that can run its parts (gather runs any)")
    module = HybridEvaluation.from_checkpoint(ckpt, path, make,
                                              hybrid={**hp["hybrid"], "kernel": cfg.hybrid.kernel,
                                                      "mass": cfg.hybrid.mass},
                                              selector={**hp["selector"], "recent": cfg.selector.recent})
    if finetuned:
        teacher = hp["teacher_ckpt"]
        return module.with_reference(teacher), f"fine-tuned hybrid {path} (teacher {teacher})", (path, ckpt)
    return module, f"hybrid {path}", (path, ckpt)


def usable_kernels(module: HybridModule, device: torch.device, wanted) -> list[str]:
    """The kernels that can run this hybrid's sparse layers on ``device`` (forward only), of ``wanted`` ("all" or a
    list: ``evaluate.kernels``)."""
    sparse = module.sparse_layers[0]
    names = [k for k in KERNELS if k != "auto"] if wanted == "all" else list(wanted)
    unknown = [k for k in names if k not in KERNELS]
    if unknown:
        raise UserError(f"evaluate.kernels={list(wanted)}: {unknown[0]!r} is unknown; use all, or a list of "
                        f"{', '.join(k for k in KERNELS if k != 'auto')}")
    return [kernel for kernel in dict.fromkeys(sparse.kernel_for_device(device) if k == "auto" else k for k in names)
            if sparse.problem_on(device, kernel=kernel) is None]


def run(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    module, source, checkpoint = load_hybrid(cfg)
    dm = build_datamodule(cfg, checkpoint)
    trainer = build_trainer(cfg, run_dir, monitor=None)
    if not cfg.trainer.fast_dev_run:
        trainer.limit_val_batches = trainer.limit_test_batches = cfg.evaluate.limit_batches
    if cfg.evaluate.validation:
        trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    r = module.results
    module.eval()
    own = module.hparams.get("teacher_ckpt") if not module.hparams.get("teacher") else None  # not a model's folder
    models = {"teacher": (module.teacher if module.reference is None else module.reference, None),
              "hybrid": (module.teacher, module.attention)}
    if module.reference is not None:
        models["finetuned_dense"] = (module.teacher, None)
    r.update(probe_results(cfg, models, dm, next(module.parameters()).device, cache={"teacher": own}))
    speed = {}
    if cfg.evaluate.time_forward:
        device = resolve_device(cfg.device.accelerator)
        module.to(device).eval()
        x = next(iter(dm.test_dataloader()))[0].to(device)
        kernels = usable_kernels(module, device, cfg.evaluate.kernels)
        log.info("timing the whole model's forward: teacher against the hybrid on %s", ", ".join(kernels))
        with trainer.precision_plugin.forward_context():  # as the stages run: bf16 autocast under bf16-mixed
            speed = forward_speed(module.teacher, module.hybrid_logits, module.sparse_layers, x, kernels,
                                  cfg.evaluate.repeats)
        speed["precision"] = str(trainer.precision)
        groups = ("model", "hybrid", "selector", "approximator")
        flops = flops_columns({g: dict(module.hparams[g] or {}) for g in groups})
        if flops:  # what the speed-up would be if time followed FLOPs (full accounting, src/costs/accounting.py)
            speed["flop_limit"] = flops["model_flops_speedup"]
    result = {"stage": "evaluate", "run_dir": str(run_dir), "source": source, "spec": spec(cfg, "evaluate"),
              "fast_dev_run": bool(cfg.trainer.fast_dev_run), **r, "speed": speed}
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", {**result, "config": OmegaConf.to_container(cfg, resolve=True)})
        write_json(run_dir / "metrics.json", result)
        (run_dir / "results.md").write_text(results_markdown(cfg, r, module, source, speed))
        log.info("results: %s", run_dir / "results.md")
    return result
