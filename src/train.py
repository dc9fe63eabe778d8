"""Entry point of every stage: ``python -m src.train [+experiment=NAME] [overrides...]``.

A thin ``@hydra.main`` around :func:`train`, which tests call directly with a composed config.
Bad input (:class:`src.errors.UserError`) ends the job with one line naming the problem and its fix.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.config import check_config, hf_teacher, register_configs
from src.errors import UserError
from src.runs.folders import RECORD, Snapshot, register_resolvers
from src.runs.records import write_json
from src.runs.resume import check_resume

log = logging.getLogger("src.train")


class _NoAdverts(logging.Filter):
    """Lightning advertises a cloud logger at every Trainer's start; the runs' logs stay about the runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())

register_configs()
register_resolvers()
# a resumed run draws the batches of the steps it has left (src/data/windows.py StepBatches): resume is exact, whatever
# Lightning assumes of a loader without a state_dict
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
# ThroughputMonitor logs tokens per second; FLOPs per second too where a stage defines flops_per_batch (the teacher)
warnings.filterwarnings("ignore", message=".*you need to define a `flops_per_batch`.*")


def stages() -> dict:
    """Stage name -> ``run(cfg, run_dir) -> dict``; imported lazily so that `--help` stays quick."""
    from src.stages import distill_approximator, distill_selector, evaluate, finetune, pipeline, teacher

    return {
        "teacher": teacher.run,
        "distill_selector": distill_selector.run,
        "distill_approximator": distill_approximator.run,
        "evaluate": evaluate.run,
        "pipeline": pipeline.run,
        "finetune": finetune.run,
    }


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run ``cfg.stage`` in ``run_dir`` after every check a config can fail; what tests and the demo call. Outside a
    Hydra job (which records it itself) the config is recorded in RUN/.hydra/config.yaml, so that the folder is a run
    folder like any other (resumable, found by the analyses)."""
    table = stages()
    if cfg.stage not in table:
        raise UserError(f"stage={cfg.stage!r} is unknown: use one of {', '.join(table)} (or +experiment=NAME)")
    check_config(cfg)
    adopt_teacher(cfg)
    if cfg.resume:
        check_resume(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / RECORD / "config.yaml"
    if not HydraConfig.initialized() and not record.is_file():
        record.parent.mkdir(exist_ok=True)
        OmegaConf.save(cfg, record)
    return table[cfg.stage](cfg, run_dir)


def adopt_teacher(cfg: DictConfig) -> None:
    """teacher=hf: the model's own layers, heads, width and positions in model.* (what the reports, the cost model
    and the lookup of earlier runs read), from its config; what cannot be loaded fails now, in one line."""
    hf = hf_teacher(cfg)
    if hf:
        from src.hf.load import model_settings

        for key, value in model_settings(hf, cfg.model.seq_len).items():
            cfg.model[key] = value


SUMMARY_KEYS = (
    "best_val_loss", "test/loss", "test/ppl", "test/acc",  # teacher
    "val/mass_recall", "val/recall", "val/top1_acc",  # selector
    "val/approx_rel_err", "val/hybrid_loss",  # approximator
    "val/teacher_loss", "val/loss_change_pct",  # evaluation (with val/hybrid_loss above)
    "test/teacher_loss", "test/hybrid_loss", "test/loss_change_pct", "test/kl_teacher_hybrid",
    "test/logits_rel_err", "test/mass_recall", "test/recall", "test/top1_acc",  # evaluation
)


def summary_lines(result: dict) -> list[str]:
    """The lines a user needs at the end of a run: where it is, what it reached."""
    lines = [f"run folder: {result.get('run_dir')}"]
    parts = [result] + [result[k] for k in ("teacher", "selector", "approximator", "evaluate") if k in result]
    hf = any((p.get("spec") or {}).get("model", {}).get("hf") for p in parts)  # teacher=hf: its tokenizer's tokens
    for part in parts:
        prefix = f"{part['stage']}: " if part is not result else ""
        if part.get("checkpoint") and (part is not result or len(parts) == 1):
            lines.append(f"{prefix}checkpoint: {part['checkpoint']}")
        for key in SUMMARY_KEYS:
            if part.get(key) is not None:
                unit = f" nats/{'token' if hf else 'char'}" if key.endswith("loss") else (
                    "%" if key.endswith("pct") else "")
                lines.append(f"{prefix}{key}: {part[key]:.4f}{unit}")
    results = Path(str(result.get("run_dir"))) / "results.md"
    if results.is_file():
        lines.append(f"results: {results}")
    lines.append(f"TensorBoard: tensorboard --logdir {result.get('run_dir')}")
    return lines


def to_log_file(text: str) -> None:
    """Append ``text`` to the run's train.log (Hydra's file handler) only: the console has its own line."""
    record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    before = Snapshot.take(run_dir, hc.output_subdir)
    try:
        result = train(cfg, run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if multirun:  # the sweep's own job folder records why the job failed; one bad job must not stop the sweep
            to_log_file(f"error: {e}")
            write_json(run_dir / "error.json", {"error": str(e), "stage": cfg.stage})
            return None
        before.restore(cfg.paths.outputs)  # a refused command leaves no trace: no stub folder, no record, no log line
        sys.exit(2)
    except Exception as e:  # a bug or a crash (e.g. out of memory): the traceback in the log, the sweep going on
        if not multirun:
            to_log_file(traceback.format_exc())
            raise
        to_log_file(f"job {hc.job.num} failed:\n{traceback.format_exc()}")
        print(f"error: job {hc.job.num} ({run_dir}) failed: {type(e).__name__}: {e} (traceback in its train.log)",
              file=sys.stderr, flush=True)
        write_json(run_dir / "error.json", {"error": f"{type(e).__name__}: {e}", "stage": cfg.stage,
                                            "traceback": traceback.format_exc()})
        return None
    print("\n".join(summary_lines(result)), flush=True)
    return result.get("best_val_loss") or result.get("test/hybrid_loss")


if __name__ == "__main__":
    main()
