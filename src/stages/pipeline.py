"""All five steps in one command: train the teacher -> (teacher signals, batch by batch) -> distil the selector
-> distil the approximator -> evaluate the hybrid. Each stage gets a sub-folder and reuses the previous one's
checkpoint; ``teacher.ckpt=PATH`` skips the teacher stage and starts from that teacher.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.stages import distill_approximator, distill_selector, evaluate, teacher

log = logging.getLogger(__name__)


def with_overrides(cfg: DictConfig, **dotted) -> DictConfig:
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # plain copy, same keys and types
    for key, value in dotted.items():
        OmegaConf.update(new, key.replace("__", "."), value)
    return new


def run(cfg: DictConfig, run_dir: Path) -> dict:
    summary: dict = {"stage": "pipeline", "run_dir": str(run_dir)}
    teacher_ckpt = cfg.teacher.ckpt
    if not teacher_ckpt:
        log.info("[1/4] training the teacher")
        t = teacher.run(cfg, run_dir / "teacher")
        teacher_ckpt = t["checkpoint"]
        summary["teacher"] = t
    cfg = with_overrides(cfg, teacher__ckpt=teacher_ckpt)
    log.info("[2/4] distilling the %s selector from %s", cfg.selector.name, teacher_ckpt)
    s = distill_selector.run(cfg, run_dir / "selector")
    cfg = with_overrides(cfg, selector__ckpt=s["checkpoint"])
    log.info("[3/4] distilling the %s approximator", cfg.approximator.name)
    a = distill_approximator.run(cfg, run_dir / "approximator")
    cfg = with_overrides(cfg, approximator__ckpt=a["checkpoint"])
    log.info("[4/4] evaluating the hybrid against the teacher")
    e = evaluate.run(cfg, run_dir / "evaluate")
    summary.update(selector=s, approximator=a, evaluate=e, checkpoint=a["checkpoint"])
    if (run_dir / "evaluate" / "results.md").is_file():
        shutil.copy(run_dir / "evaluate" / "results.md", run_dir / "results.md")
    return summary
