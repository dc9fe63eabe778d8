"""All five steps in one command: train the teacher -> (teacher signals, batch by batch) -> distil the selector
-> distil the approximator -> evaluate the hybrid. Each stage gets a sub-folder and reuses the previous one's
checkpoint; ``teacher.ckpt=PATH`` skips the teacher stage and starts from that teacher, ``selector.ckpt=PATH`` the
selector's distillation. ``resume=RUN`` continues an interrupted pipeline: the steps that finished are not run
again, the one that was cut short continues from its last checkpoint. With ``pipeline.reuse=true`` (a sweep over
budgets, ``+experiment=budget_curve``) the newest finished teacher of the same model and data under
outputs/ is reused, and so is a selector distilled from that teacher with the same settings (a selector trained
with KL or CE does not depend on the budget): each is trained once, by the first job that needs it.

With ``pipeline.measure_speed=true`` (the scaling grid sets it) a last step times the trained hybrid's first
sparse attention layer against the teacher's (``measure_speed``), on the run's device. The run folder gets
``metrics.json`` (every stage's numbers) and, in ``tensorboard/``, one hparams entry: the settings with the final
metrics, so that the jobs of a sweep compare side by side in TensorBoard's HPARAMS tab.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src.bench.speed import layer_speed
from src.config import resolve_device
from src.costs.accounting import flops_columns
from src.errors import UserError
from src.hybrid import HybridSpec, SparseParts
from src.runs.commands import command_for
from src.runs.lookup import checkpoint_for, find
from src.runs.records import read_json, write_json
from src.selectors import SELECTORS
from src.stages import distill_approximator, distill_selector, evaluate, teacher
from src.config import hf_teacher
from src.stages.common import model_shape, plain

log = logging.getLogger(__name__)


def with_overrides(cfg: DictConfig, **dotted) -> DictConfig:
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # plain copy, same keys and types
    for key, value in dotted.items():
        OmegaConf.update(new, key.replace("__", "."), value)
    return new


def reusable(cfg: DictConfig, stage: str, run_dir: Path, teacher: str | None = None) -> str | None:
    """A finished run of ``stage`` that fits: among this job's siblings (a sweep's folder) first, then under
    ``paths.outputs``."""
    return find(cfg, stage, teacher, roots=(run_dir.parent, Path(cfg.paths.outputs)))


def finished_result(checkpoint: str) -> dict:
    """The metrics.json of the finished run a checkpoint (RUN/checkpoints/*.ckpt) belongs to."""
    return read_json(Path(checkpoint).parent.parent / "metrics.json") or {}


def step(name: str, run, cfg: DictConfig, folder: Path) -> dict:
    """One step of the pipeline in ``folder``; when the pipeline is resumed (``resume=``) a step that finished
    before (its metrics.json) is not run again, and one that was cut short continues from its last.ckpt."""
    done = read_json(folder / "metrics.json")
    if cfg.resume and done is not None:
        log.info("[resume] %s finished before: %s", name, folder)
        return done
    return run(cfg, folder)


def check_settings(cfg: DictConfig) -> None:
    """Bad hybrid settings (K, layers, heads) or parts fail now, not after minutes of teacher training."""
    if hf_teacher(cfg) and cfg.pipeline.measure_speed:
        raise UserError("pipeline.measure_speed times one layer of the project's own GPT: with teacher=hf the "
                        "evaluation's whole-model tokens/s is the measure (evaluate.time_forward); unset it")
    model = model_shape(cfg)
    try:
        spec = HybridSpec.from_config(model, **plain(cfg, "hybrid"))
        SparseParts(spec, model, plain(cfg, "selector"), plain(cfg, "approximator"))
    except ValueError as e:
        raise UserError(str(e)) from None


def run(cfg: DictConfig, run_dir: Path) -> dict:
    check_settings(cfg)
    summary: dict = {"stage": "pipeline", "run_dir": str(run_dir)}
    teacher_ckpt = cfg.teacher.ckpt
    if not teacher_ckpt and cfg.pipeline.reuse:
        teacher_ckpt = reusable(cfg, "teacher", run_dir)
        if teacher_ckpt:
            log.info("[1/4] reusing the teacher %s (pipeline.reuse)", teacher_ckpt)
            summary["teacher"] = finished_result(teacher_ckpt)
    if not teacher_ckpt:
        log.info("[1/4] %s the teacher", "measuring" if hf_teacher(cfg) else "training")
        t = step("the teacher", teacher.run, cfg, run_dir / "teacher")
        teacher_ckpt = t["checkpoint"] or t.get("hf_model")  # teacher=hf: the model's folder (or hub name)
        summary["teacher"] = t
    cfg = with_overrides(cfg, teacher__ckpt=teacher_ckpt)
    reused = (reusable(cfg, "distill_selector", run_dir, teacher_ckpt)
              if cfg.pipeline.reuse and not cfg.selector.ckpt else None)
    done = finished_result(reused) if reused else {}
    trained = SELECTORS[cfg.selector.name].trainable  # a parameter-free one is "distilled" in 0 steps
    if reused and trained and done.get("steps") != cfg.selector.max_steps:  # the steps are not in the spec
        log.info("[2/4] not reusing the selector %s: distilled %s steps, this run asks selector.max_steps=%d",
                 reused, done.get("steps"), cfg.selector.max_steps)
        reused = None
    if cfg.selector.ckpt:  # a distilled selector named: used as it is, once checked against this run
        path, ckpt = checkpoint_for(cfg, "distill_selector", command_for("distill_selector", cfg))
        log.info("[2/4] using the %s selector %s (selector.ckpt)", cfg.selector.name, path)
        theirs = ckpt["hyper_parameters"].get("teacher_ckpt")
        if theirs and Path(theirs).resolve() != Path(teacher_ckpt).resolve():
            log.warning("the selector %s was distilled from the teacher %s, not from this run's %s", path, theirs,
                        teacher_ckpt)
        s = {**finished_result(path), "checkpoint": path}
    elif reused:
        log.info("[2/4] reusing the %s selector %s (pipeline.reuse)", cfg.selector.name, reused)
        s = done
    else:
        log.info("[2/4] distilling the %s selector from %s", cfg.selector.name, teacher_ckpt)
        s = step("the selector", distill_selector.run, cfg, run_dir / "selector")
    cfg = with_overrides(cfg, selector__ckpt=s["checkpoint"])
    log.info("[3/4] distilling the %s approximator", cfg.approximator.name)
    a = step("the approximator", distill_approximator.run, cfg, run_dir / "approximator")
    cfg = with_overrides(cfg, approximator__ckpt=a["checkpoint"])
    log.info("[4/4] evaluating the hybrid against the teacher")
    e = step("the evaluation", evaluate.run, cfg, run_dir / "evaluate")
    summary.update(selector=s, approximator=a, evaluate=e, checkpoint=a["checkpoint"])
    if cfg.pipeline.measure_speed:
        log.info("[+] timing one attention layer: SDPA against %s + %s", cfg.selector.name, cfg.approximator.name)
        summary["speed"] = measure_speed(cfg)
    if (run_dir / "evaluate" / "results.md").is_file():
        shutil.copy(run_dir / "evaluate" / "results.md", run_dir / "results.md")
    write_json(run_dir / "metrics.json", {**summary, "config": OmegaConf.to_container(cfg, resolve=True)})
    if not cfg.trainer.fast_dev_run:
        log_hparams(cfg, summary, run_dir / "tensorboard")
    return summary


def measure_speed(cfg: DictConfig) -> dict:
    """Median forward time of the trained hybrid's first sparse attention layer against the teacher's own layer:
    both from the evaluated checkpoint, timed side by side (src/bench/speed.py ``layer_speed``) on one random input
    of this model's shape (batch 1), on the run's device."""
    module, _, _ = evaluate.load_hybrid(cfg)
    device = resolve_device(cfg.device.accelerator)
    module = module.to(device).eval()
    layer = module.spec.layers[0]
    x = torch.randn(1, cfg.model.seq_len, cfg.model.d_model, device=device)
    speed = layer_speed(module.teacher.blocks[layer].attn, module.attention[layer], x, cfg.pipeline.bench_repeats)
    return {"variant": f"{cfg.selector.name}+{cfg.approximator.name}", "layer": layer, **speed}


HPARAMS = ("model.name", "model.n_layer", "model.n_head", "model.d_model", "model.seq_len", "data.name",
           "trainer.max_steps", "selector.name", "selector.max_steps", "approximator.name", "approximator.max_steps",
           "hybrid.top_k", "hybrid.budget", "hybrid.kernel", "hybrid.layers", "hybrid.heads")
HPARAM_METRICS = {
    "teacher_loss": ("evaluate", "test/teacher_loss"), "hybrid_loss": ("evaluate", "test/hybrid_loss"),
    "loss_change_pct": ("evaluate", "test/loss_change_pct"), "kl": ("evaluate", "test/kl_teacher_hybrid"),
    "logits_rel_err": ("evaluate", "test/logits_rel_err"), "mass_recall": ("evaluate", "test/mass_recall"),
    "recall": ("evaluate", "test/recall"), "top1_acc": ("evaluate", "test/top1_acc"),
    "sdpa_ms": ("speed", "sdpa_ms"), "sparse_ms": ("speed", "sparse_ms"),
    "measured_speedup": ("speed", "measured_speedup"),
}


def log_hparams(cfg: DictConfig, summary: dict, log_dir: Path) -> None:
    """One TensorBoard hparams entry (settings -> final metrics) for the whole pipeline run."""
    from torch.utils.tensorboard import SummaryWriter

    hparams = {}
    for key in HPARAMS:
        value = OmegaConf.select(cfg, key)
        plain = isinstance(value, (int, float, str, bool))
        hparams[key] = value if plain else str(value if value is None else list(value))
    flops = flops_columns(OmegaConf.to_container(cfg, resolve=True))  # full accounting (src/costs/accounting.py)
    metrics = {f"hparams/{k}": float(flops[k]) for k in ("attn_flops_speedup", "model_flops_speedup") if k in flops}
    for name, (part, key) in HPARAM_METRICS.items():
        value = summary.get(part, {}).get(key)
        if isinstance(value, (int, float)):
            metrics[f"hparams/{name}"] = float(value)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_hparams(hparams, metrics, run_name=".")
