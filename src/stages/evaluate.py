"""Stage 4: evaluate the hybrid against its teacher on the test split; write results.md and results.json.

Quality of the whole model (both run on the same batches): the teacher's and the hybrid's loss and perplexity,
the change in loss, KL(teacher ‖ hybrid) of the next-token distributions and the relative error of the final
logits (the prototype's headline metric). Per sparse head, teacher-forced: selector top-1 accuracy, recall@K,
attention-mass recall, the density of keys actually read (mean and spread: the dynamic budget's), approximator
MSE and relative error. Speed of the whole model (``evaluate.time_forward``): the teacher's forward (SDPA) against
the hybrid's on each kernel that can serve it, on one test batch, in tokens per second.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric

from src.approximators import APPROXIMATORS
from src.errors import UserError
from src.metrics import PerHeadRatio, approximation_stats
from src.report import markdown_table
from src.runs import build_trainer, make_command, model_mismatch, stage_spec, write_json
from src.selectors import SELECTORS
from src.sparse import KERNELS
from src.sparse.phases import resolve_device, time_runs
from src.stages.hybrid_module import (
    HybridModule,
    check_same,
    datamodule_for,
    hybrid_hparams,
    hybrid_from_checkpoint,
    stage_checkpoint,
    resolve_teacher,
)

log = logging.getLogger(__name__)

# the prototype's published figures (random tokens, layer 0 head 0, top-3, mlp selector + mlp approximator)
PROTOTYPE = {"top1_acc": 0.092, "logits_rel_err": 0.5746}


class HybridEvaluation(HybridModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_metrics = self.per_head_metrics(["top1_acc", "recall", "mass_recall", "density", "density_sq",
                                                   "approx_mse", "approx_rel_err"])
        self.teacher_loss, self.hybrid_loss, self.kl = MeanMetric(), MeanMetric(), MeanMetric()
        self.logits_rel_err = PerHeadRatio(1, sqrt=True)
        self.results: dict[str, float] = {}

    def evaluate_batch(self, batch, keep_figure: bool) -> None:
        x, y = batch
        teacher_logits, signals = self.teacher_signals(x)
        hybrid_logits = self.hybrid_logits(x)
        n = y.numel()
        self.teacher_loss.update(F.cross_entropy(teacher_logits.flatten(0, 1), y.flatten()), weight=n)
        self.hybrid_loss.update(F.cross_entropy(hybrid_logits.flatten(0, 1), y.flatten()), weight=n)
        logp_t, logp_h = teacher_logits.log_softmax(-1), hybrid_logits.log_softmax(-1)
        self.kl.update((logp_t.exp() * (logp_t - logp_h)).sum(-1).mean(), weight=n)
        self.logits_rel_err.update((hybrid_logits - teacher_logits).pow(2).sum()[None],
                                   teacher_logits.pow(2).sum()[None])
        stats = []
        for layer, s in signals.items():
            sel = self.select(layer, s)
            stats.append({**self.selection_stats(layer, s, sel),
                          **approximation_stats(self.approximate(layer, s, sel), self.served(s).head_out)})
            if keep_figure:
                self.keep_figure_input(s, sel)
        self.update_per_head(self.head_metrics, stats)

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
        for m in (self.teacher_loss, self.hybrid_loss, self.kl, self.logits_rel_err):
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


def approximator_command(cfg: DictConfig) -> str:
    return make_command("pipeline", cfg, ("model", "data", "selector", "approximator", "hybrid"))


def load_hybrid(cfg: DictConfig) -> tuple[HybridEvaluation, str]:
    """The hybrid to evaluate: from a distill_approximator checkpoint, or (nothing trained) from the teacher."""
    needs_training = SELECTORS[cfg.selector.name].trainable or APPROXIMATORS[cfg.approximator.name].trainable
    if not needs_training and not cfg.approximator.ckpt:
        teacher, teacher_ckpt = resolve_teacher(cfg)
        module = HybridEvaluation(**hybrid_hparams(cfg, teacher, teacher_ckpt, 0.0, 0))
        module.teacher.load_state_dict(teacher.gpt.state_dict())
        return module, f"teacher {teacher_ckpt}"
    path, ckpt = stage_checkpoint(cfg, "distill_approximator", "approximator.ckpt",
                                  f"{cfg.selector.name} + {cfg.approximator.name} hybrid", approximator_command(cfg))
    hp = ckpt["hyper_parameters"]
    diff = model_mismatch(hp.get("model"), cfg)
    if diff:
        raise UserError(f"{path} was trained for another model: {diff}; run with that model's settings, or make a "
                        f"hybrid for this one with `{approximator_command(cfg)}`")
    wanted = {"model": hp["model"], "vocab": hp["vocab"], "hybrid": OmegaConf.to_container(cfg.hybrid, resolve=True),
              "selector": OmegaConf.to_container(cfg.selector), "approximator": OmegaConf.to_container(cfg.approximator)}
    check_same(hp, wanted, ("hybrid", "selector", "approximator"), path, approximator_command(cfg))
    # this run's kernel and dynamic budget: the same trained parts
    module = hybrid_from_checkpoint(ckpt, path, approximator_command(cfg), HybridEvaluation,
                                    hybrid={**hp["hybrid"], "kernel": cfg.hybrid.kernel, "mass": cfg.hybrid.mass},
                                    selector={**hp["selector"], "recent": cfg.selector.recent})
    return module, f"hybrid {path}"


def usable_kernels(module: HybridEvaluation, device: torch.device, wanted) -> list[str]:
    """The kernels that can run this hybrid's sparse layers on ``device`` (forward only), of ``wanted`` ("all" or a
    list)."""
    sparse = next(iter(module._attention.values())).sparse
    names = [k for k in KERNELS if k != "auto"] if wanted == "all" else list(wanted)
    unknown = [k for k in names if k not in KERNELS]
    if unknown:
        raise UserError(f"evaluate.kernels={list(wanted)}: {unknown[0]!r} is unknown; use all, or a list of "
                        f"{', '.join(k for k in KERNELS if k != 'auto')}")
    return [kernel for kernel in dict.fromkeys(sparse.kernel_for_device(device) if k == "auto" else k for k in names)
            if sparse.problem_on(device, kernel=kernel) is None]


@torch.no_grad()
def forward_speed(module: HybridEvaluation, x: torch.Tensor, kernels: list[str], repeats: int) -> dict:
    """Median seconds of the whole model's forward on ``x`` (B, T): the teacher (SDPA), then the hybrid on each of
    ``kernels``, timed side by side in this process (src/sparse/phases.py ``time_runs``); tokens per second."""
    was_training = module.training
    module.eval()
    device, tokens = x.device, x.numel()
    sparse = [a.sparse for a in module._attention.values()]
    saved = [s.kernel for s in sparse]
    seconds = {"teacher": statistics.median(time_runs(module.teacher, (x,), device, repeats, max_seconds=None))}
    try:
        for kernel in kernels:
            for s in sparse:
                s.kernel = kernel
            seconds[kernel] = statistics.median(time_runs(module.hybrid_logits, (x,), device, repeats,
                                                          max_seconds=None))
    finally:
        for s, kernel in zip(sparse, saved):
            s.kernel = kernel
        module.train(was_training)
    out = {"batch": x.size(0), "seq_len": x.size(1), "device": str(device), "repeats": repeats,
           "teacher_tokens_per_s": tokens / seconds["teacher"], "teacher_ms": 1e3 * seconds["teacher"]}
    for kernel in kernels:
        out[f"{kernel}_tokens_per_s"] = tokens / seconds[kernel]
        out[f"{kernel}_ms"] = 1e3 * seconds[kernel]
        out[f"{kernel}_speedup"] = seconds["teacher"] / seconds[kernel]
    out["kernels"] = list(kernels)
    return out


def speed_markdown(speed: dict) -> list[str]:
    if not speed:
        return []
    lines = [
        "## Whole-model forward speed",
        "",
        f"One test batch ({speed['batch']} × {speed['seq_len']} tokens) on {speed['device']}, median of "
        f"{speed['repeats']} forwards after a warm-up, teacher and hybrid timed side by side in one process.",
        "",
        markdown_table(["model", "kernel", "ms per forward", "tokens / s", "speed-up over the teacher"],
                       [["teacher", "SDPA", f"{speed['teacher_ms']:.1f}", f"{speed['teacher_tokens_per_s']:,.0f}",
                         "1.00×"]] +
                       [["hybrid", k, f"{speed[f'{k}_ms']:.1f}", f"{speed[f'{k}_tokens_per_s']:,.0f}",
                         f"{speed[f'{k}_speedup']:.2f}×"] for k in speed["kernels"]], "llrrr"),
    ]
    return lines + [""]


def block_note(cfg: DictConfig, module: HybridEvaluation) -> str:
    """For a block selector: the budget in blocks, and how much of the context one block is."""
    selector = next(iter(module.parts.selectors.values()))
    if not selector.picks_blocks:
        return ""
    T, bs = cfg.model.seq_len, selector.block_size
    n = module.spec.budget.blocks(T, bs)
    return (f" ({n} block{'s' * (n > 1)} of {bs} keys, the own block included; one block is {bs / T:.0%} of the "
            f"T={T} context)")


def results_markdown(cfg: DictConfig, r: dict, module: HybridEvaluation, source: str, speed: dict) -> str:
    first = module.pair_names[0]
    layer, head = module.spec.pairs()[0]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    val = lambda key, spec: format(r[f"val/{key}"], spec) if f"val/{key}" in r else "–"  # noqa: E731
    lines = [
        f"# Hybrid vs teacher: {cfg.selector.name} selector + {cfg.approximator.name} approximator",
        "",
        f"- data: {cfg.data.name}, test and validation splits; model: {cfg.model.name} ({cfg.model.n_layer} layers, "
        f"{cfg.model.n_head} heads, d_model {cfg.model.d_model}, T={cfg.model.seq_len})",
        f"- sparse layers {list(module.spec.layers)}, heads {list(module.spec.heads)} "
        f"({len(module.pair_names)} of {cfg.model.n_layer * cfg.model.n_head} heads), budget {module.spec.budget} "
        f"per query, kernel {cfg.hybrid.kernel}{block_note(cfg, module)}",
        f"- loaded from: {source}",
        "",
        "## The prototype's \"Expected Output\", with this run's numbers",
        "",
        "```",
        f"[result] relative error (final logits, hybrid vs teacher): {r['test/logits_rel_err']:.4f}",
        f"[result] key selector top-1 accuracy (head {head}, layer {layer}): {r[f'test/top1_acc/{first}']:.3f}",
        "",
        "Final Results:",
        f"- KeySelector top-1 accuracy: {pct(r[f'test/top1_acc/{first}'])}   "
        f"(prototype: {pct(PROTOTYPE['top1_acc'])}, random tokens)",
        f"- Hybrid vs Teacher relative error: {pct(r['test/logits_rel_err'])}   "
        f"(prototype: {pct(PROTOTYPE['logits_rel_err'])})",
        "```",
        "",
        "## Whole model (test split; validation split beside it)",
        "",
        markdown_table(["metric", "test", "validation"], [
            ["teacher loss (nats/token)", f"{r['test/teacher_loss']:.4f}", val("teacher_loss", ".4f")],
            ["hybrid loss (nats/token)", f"{r['test/hybrid_loss']:.4f}", val("hybrid_loss", ".4f")],
            ["loss change", f"{r['test/loss_change_pct']:+.2f}%", f"{val('loss_change_pct', '+.2f')}%"],
            ["teacher / hybrid perplexity", f"{r['test/teacher_ppl']:.3f} / {r['test/hybrid_ppl']:.3f}",
             f"{val('teacher_ppl', '.3f')} / {val('hybrid_ppl', '.3f')}"],
            ["KL(teacher ‖ hybrid) per token", f"{r['test/kl_teacher_hybrid']:.5f}", val("kl_teacher_hybrid", ".5f")],
            ["relative error of the final logits", f"{r['test/logits_rel_err']:.4f}", val("logits_rel_err", ".4f")],
        ], "lll"),
        "",
        markdown_table(["metric (test split)", "value"], [
            ["attention-mass recall (mean over sparse heads)", f"{r['test/mass_recall']:.4f}"],
            ["density: keys read per query / T (mean ± spread over queries and heads)",
             f"{r['test/density']:.4f} ± {r['test/density_std']:.4f}"],
            ["recall@K (mean)", f"{r['test/recall']:.4f}"],
            ["selector top-1 accuracy (mean)", f"{r['test/top1_acc']:.4f}"],
            ["approximator relative error (mean)", f"{r['test/approx_rel_err']:.4f}"],
        ], "ll"),
        "",
        *speed_markdown(speed),
        "## Per sparse head (teacher-forced)",
        "",
        markdown_table(["head", "top-1 acc", "recall@K", "mass recall", "approx MSE", "approx rel. error"],
                       [[p, f"{r[f'test/top1_acc/{p}']:.4f}", f"{r[f'test/recall/{p}']:.4f}",
                         f"{r[f'test/mass_recall/{p}']:.4f}", f"{r[f'test/approx_mse/{p}']:.5f}",
                         f"{r[f'test/approx_rel_err/{p}']:.4f}"] for p in module.pair_names], "llllll"),
    ]
    lines += ["", "## Configuration", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    module, source = load_hybrid(cfg)
    dm = datamodule_for(cfg, module.vocab, source)
    trainer = build_trainer(cfg, run_dir, monitor=None)
    if not cfg.trainer.fast_dev_run:
        trainer.limit_val_batches = trainer.limit_test_batches = cfg.evaluate.limit_batches
    if cfg.evaluate.validation:
        trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    r = module.results
    speed = {}
    if cfg.evaluate.time_forward:
        device = resolve_device(cfg.device.accelerator)
        module.to(device)
        x = next(iter(dm.test_dataloader()))[0].to(device)
        kernels = usable_kernels(module, device, cfg.evaluate.kernels)
        log.info("timing the whole model's forward: teacher against the hybrid on %s", ", ".join(kernels))
        speed = forward_speed(module, x, kernels, cfg.evaluate.repeats)
    result = {"stage": "evaluate", "run_dir": str(run_dir), "source": source,
              "spec": stage_spec(cfg, "distill_approximator"), "fast_dev_run": bool(cfg.trainer.fast_dev_run), **r,
              "speed": speed}
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", {**result, "config": OmegaConf.to_container(cfg, resolve=True)})
        write_json(run_dir / "metrics.json", result)
        (run_dir / "results.md").write_text(results_markdown(cfg, r, module, source, speed))
        log.info("results: %s", run_dir / "results.md")
    return result
