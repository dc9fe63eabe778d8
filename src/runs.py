"""Run folders and the Lightning Trainer that every stage shares: logger, checkpoints, progress bar."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.callbacks import SaveOnInterrupt, StopOnNonFinite
from src.errors import UserError

OUTPUT_ROOT = Path("outputs")


def run_folder(resume: str) -> Path | None:
    """The run folder ``resume=`` names: RUN or RUN/checkpoints/*.ckpt, where RUN holds .hydra/config.yaml (how it
    was started); a pipeline's step folder (or a checkpoint in it) names its pipeline. None: no such folder."""
    p = Path(resume).expanduser()
    if p.is_file():
        if p.parent.name != "checkpoints":
            return None
        p = p.parent.parent
    if not p.is_dir():
        return None
    return next((f for f in (p, p.parent) if (f / ".hydra" / "config.yaml").is_file()), None)


def run_dir_for(resume: str | None, stage: str, model_name: str) -> str:
    """Hydra resolver behind ``hydra.run.dir``: a new timestamped folder, or the folder of the run to resume (never
    a folder that is not a run's: a wrong ``resume=`` gets a fresh folder, where its one-line error is recorded)."""
    folder = run_folder(resume) if resume else None
    if folder is not None:
        return str(folder)
    return str(OUTPUT_ROOT / stage / model_name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


def hydra_subdir_for(resume: str | None) -> str:
    """Hydra resolver behind ``hydra.output_subdir``: a resumed run keeps the config it was started with in
    .hydra/ and records the resuming command's beside it, in .hydra/resumed-TIMESTAMP/."""
    return f".hydra/resumed-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}" if resume else ".hydra"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", run_dir_for)
    if not OmegaConf.has_resolver("hydra_subdir"):
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir_for)
    if not OmegaConf.has_resolver("idiv"):  # e.g. hybrid.top_k: ${idiv:${model.seq_len},8}
        OmegaConf.register_new_resolver("idiv", lambda a, b: int(a) // int(b))


STAGE_STEPS = {"teacher": "trainer.max_steps", "distill_selector": "selector.max_steps",
               "distill_approximator": "approximator.max_steps"}  # the stages that train, and their step setting


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """``resume=`` must name ``run_dir``, a run of the same stage that has something left to do: an unfinished run,
    or a finished one asked for more steps. One line otherwise, before anything is written."""
    given = Path(cfg.resume).expanduser()
    start_again = f"start a new run without resume=, or give a run folder such as outputs/{cfg.stage}/.../TIMESTAMP"
    if not given.exists():
        raise UserError(f"resume={cfg.resume}: no such run folder or checkpoint; {start_again}")
    if given.is_file() and given.parent.name != "checkpoints":
        raise UserError(f"resume={cfg.resume} is not a checkpoint of a run folder (RUN/checkpoints/last.ckpt): give "
                        "the run folder itself")
    folder = run_folder(cfg.resume) or (given if given.is_dir() else given.parent.parent)
    if folder.resolve() != run_dir.resolve():
        raise UserError(f"resume={cfg.resume} names {folder}, but this run writes to {run_dir}: give the run folder "
                        "itself (and no hydra.run.dir)")
    again = f"python -m src.train resume={run_dir} {' '.join(original_overrides(run_dir))}".strip()
    started = run_dir / ".hydra" / "config.yaml"
    if started.is_file():
        stage = OmegaConf.load(started).get("stage")
        if stage != cfg.stage:
            raise UserError(f"{run_dir} is a {stage} run, but this command runs stage {cfg.stage}: resume it with "
                            f"the settings it was started with: {again}")
    done = run_dir / "metrics.json"
    if done.is_file():
        try:
            steps = json.loads(done.read_text()).get("steps")
        except (OSError, ValueError):
            steps = None
        wanted = OmegaConf.select(cfg, STAGE_STEPS[cfg.stage]) if cfg.stage in STAGE_STEPS else None
        if steps is None or wanted is None or steps >= wanted:
            more = (f"; to train it longer, give {STAGE_STEPS[cfg.stage]} above {steps}"
                    if steps is not None and wanted is not None else "")
            raise UserError(f"{run_dir} is finished (metrics.json): nothing to resume{more}; its results stay as "
                            "they are")


def resume_checkpoint(run_dir: Path, required: bool = True) -> str | None:
    """The checkpoint a resumed stage continues from: RUN/checkpoints/last.ckpt, checked readable. A pipeline's step
    that never saved one (``required`` False) starts from the beginning: None."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        if not required:
            return None
        raise UserError(f"resume: no checkpoint at {ckpt}; the run saved none (it stopped before its first "
                        "validation): start it again without resume=")
    from src.checkpoints import read_checkpoint

    read_checkpoint(ckpt, make="the run cannot continue from it; start it again without resume=")
    return str(ckpt)


def resume_point(cfg: DictConfig, run_dir: Path, stage: str) -> str | None:
    """Where ``stage`` continues from, when this command resumes (``resume=``): its last.ckpt -- required when the
    stage is the command's own, optional when it is a step of a resumed pipeline. None: start."""
    if not cfg.resume:
        return None
    return resume_checkpoint(run_dir, required=cfg.stage == stage)


def make_command(experiment: str, cfg: DictConfig, groups: tuple[str, ...]) -> str:
    """The command that makes what this run needs: ``+experiment=NAME``, the run's choice in each group, and the
    overrides of this command line that touch those groups (e.g. ``model.n_layer=2``), so the result fits."""
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []  # none outside a Hydra job
    parts = [f"+experiment={experiment}"]
    for group in groups:
        if group in cfg and "name" in cfg[group]:
            parts.append(f"{group}={cfg[group].name}")
        parts += [o for o in task if o.split("=", 1)[0].lstrip("+~").startswith(f"{group}.")]
    if "data" in groups and cfg.data.name == "text_file" and not any(p.startswith("data.path=") for p in parts):
        parts.append(f"data.path={cfg.data.path}")
    if "data" in groups and cfg.data.name == "python_source" and not any(p.startswith("data.package=") for p in parts):
        parts.append(f"data.package={cfg.data.package}")
    return "python -m src.train " + " ".join(dict.fromkeys(parts))


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: ``resume=`` its top folder (a pipeline's, for one of its steps) with
    this command line's overrides."""
    top, task = run_dir, []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        top, task = Path(hc.runtime.output_dir), [o for o in hc.overrides.task if not o.startswith("resume=")]
    return " ".join(["python -m src.train", f"resume={top}", *task])


def original_overrides(run: Path) -> list[str]:
    """The command-line overrides a run was started with (its .hydra/overrides.yaml), [] when unknown."""
    f = run / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.load(f) if not str(o).startswith("resume=")] if f.is_file() else []
    except Exception:  # noqa: BLE001  a damaged record only loses the hint
        return []


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    monitor: str | None,
    mode: str = "min",
    max_steps: int | None = None,
    val_every: int | None = None,
    lr_setting: str = "optim.lr",
) -> L.Trainer:
    """The Trainer of every stage: TensorBoard in RUN/tensorboard, best/last checkpoints in RUN/checkpoints.

    ``monitor`` names the validation metric that picks best.ckpt (None: no checkpoints, e.g. evaluation);
    ``max_steps`` / ``val_every`` override ``trainer.*`` for stages with budgets of their own; ``lr_setting`` is
    the learning rate to name when the loss diverges.
    """
    t, d = cfg.trainer, cfg.device
    max_steps = t.max_steps if max_steps is None else max_steps
    val_every = t.val_every if val_every is None else val_every
    callbacks: list[L.Callback] = [StopOnNonFinite(lr_setting)]
    logger = False
    if not t.fast_dev_run:
        # train/device/items_per_sec: tokens per second, over the last log_every steps (data loading included)
        callbacks.append(ThroughputMonitor(batch_size_fn=lambda batch: batch[0].size(0),
                                           length_fn=lambda batch: batch[0].numel(), window_size=max(2, t.log_every)))
        logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        if monitor:
            callbacks.append(SaveOnInterrupt(run_dir, resume_command(run_dir)))
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    filename="best",
                    monitor=monitor,
                    mode=mode,
                    save_top_k=1,
                    save_last=True,
                    auto_insert_metric_name=False,
                    enable_version_counter=False,
                )
            )
    return L.Trainer(
        accelerator=d.accelerator,
        devices=d.devices,
        strategy=d.strategy,
        num_nodes=d.num_nodes,
        precision=d.precision,
        max_steps=max_steps,
        val_check_interval=max(1, min(val_every, max_steps)),  # so that the last steps are validated too
        check_val_every_n_epoch=None,  # count validation intervals in steps, across epochs
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every,
        gradient_clip_val=cfg.optim.grad_clip or None,
        fast_dev_run=t.fast_dev_run,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=True,
        enable_checkpointing=bool(monitor) and not t.fast_dev_run,
        use_distributed_sampler=False,  # the DataModule shares the data out itself (src/data.py: exact resume)
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )


def scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        v = float(v)
        out[k] = v if math.isfinite(v) else None
    return out


def finite(data):
    """``data`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def saved_checkpoint(trainer: L.Trainer, run_dir: Path) -> str:
    """The checkpoint a stage hands on: best.ckpt when validation picked one, else the final weights (saved now).

    Even a fast_dev_run leaves one, so that a pipeline can chain its stages in a smoke test; ``find_run``
    never offers a fast_dev_run's checkpoint to a later run.
    """
    cb = trainer.checkpoint_callback
    if cb is not None and cb.best_model_path:
        return cb.best_model_path
    path = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------- finding runs


def model_spec(cfg: DictConfig) -> dict:
    """What a checkpoint's model must match: its shape, not its preset name."""
    return {k: cfg.model[k] for k in ("n_layer", "n_head", "d_model", "seq_len", "bias", "pos")}


def model_mismatch(model: dict | None, cfg: DictConfig) -> str:
    """How a checkpoint's model settings differ from this run's shape ("" when they fit), e.g. "d_model=128
    (this run: 64)"."""
    have = {k: (model or {}).get(k, "learned" if k == "pos" else None) for k in model_spec(cfg)}  # older: learned
    want = model_spec(cfg)
    return ", ".join(f"{k}={have[k]} (this run: {v})" for k, v in want.items() if have[k] != v)


SELECTOR_ARCH = ("name", "hidden", "d_index", "loss", "block_size", "sinks")  # selector settings its weights depend on
HYBRID_ARCH = ("layers", "heads", "top_k", "budget")  # hybrid settings the trained parts depend on
BUDGET_KEYS = ("top_k", "budget")  # ... of which these only matter to a selector trained with the top-K loss


def hybrid_arch(hybrid: dict | None, budget: bool = True) -> dict:
    """The settings of ``hybrid`` that a trained selector or approximator depends on. The kernel and the dynamic
    budget's ``mass`` are not among them (every kernel runs the same choice; the mass only narrows it), an unset
    budget is the same as an absent one, and ``budget=False`` leaves the budget out (``reads_budget``)."""
    keys = HYBRID_ARCH if budget else tuple(k for k in HYBRID_ARCH if k not in BUDGET_KEYS)
    return {k: (hybrid or {}).get(k) for k in keys}


def reads_budget(selector: dict) -> bool:
    """Whether a selector's distillation depends on the budget: only the top-K loss does (kl and ce read the
    teacher's attention, not K), so a selector distilled once serves every budget."""
    return selector.get("loss") == "topk"


def data_spec(cfg: DictConfig) -> dict:
    d = cfg.data
    spec = {"name": d.name}
    if d.name == "text_file":
        spec["path"] = str(Path(d.path).expanduser().resolve()) if d.path else None
    if d.name == "python_source":
        spec["package"] = d.package
    if d.name == "synthetic":
        spec.update(vocab_size=d.vocab_size, num_tokens=d.num_tokens)
    return spec


def stage_spec(cfg: DictConfig, stage: str) -> dict:
    """The settings a stage's output depends on; a later run reuses an earlier one only when they are equal."""
    spec = {"model": model_spec(cfg), "data": data_spec(cfg)}
    if stage in ("distill_selector", "distill_approximator"):
        budget = stage == "distill_approximator" or reads_budget(cfg.selector)
        spec["hybrid"] = hybrid_arch(OmegaConf.to_container(cfg.hybrid, resolve=True), budget)
        spec["selector"] = {k: cfg.selector[k] for k in SELECTOR_ARCH}
    if stage == "distill_approximator":
        spec["approximator"] = {k: cfg.approximator[k] for k in ("name", "hidden")}
    return spec


def find_run(stage: str, spec: dict, root: Path | None = None, teacher: str | None = None) -> str | None:
    """The checkpoint of the newest finished run of ``stage`` under outputs/ whose spec equals ``spec`` (and, with
    ``teacher``, that was distilled from that teacher checkpoint). A teacher without a finite validation loss (it
    diverged, or never validated) is no teacher."""
    root = root or OUTPUT_ROOT
    found = []
    for f in root.glob("**/metrics.json"):
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        ckpt = m.get("checkpoint")
        if teacher is not None and m.get("teacher_ckpt") != teacher:
            continue
        if stage == "teacher" and not isinstance(m.get("best_val_loss"), (int, float)):
            continue
        if m.get("stage") == stage and m.get("spec") == spec and not m.get("fast_dev_run") and ckpt and Path(ckpt).is_file():
            found.append((Path(ckpt).stat().st_mtime, ckpt))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------------- sweeps


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, one line per job (finished or failed) and how to gather them; the
    multirun exits with status 1 when a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        jobs = sorted((p for p in root.iterdir() if p.is_dir() and (p / ".hydra").is_dir()), key=job_number)
        failed = [p for p in jobs if (p / "error.json").is_file()]
        print(f"\nsweep {root}: {len(jobs)} jobs, {len(jobs) - len(failed)} finished, {len(failed)} failed", flush=True)
        for p in failed:
            try:
                error = json.loads((p / "error.json").read_text())["error"].splitlines()[0]
            except (OSError, ValueError, KeyError, IndexError):
                error = "see its log"
            print(f"  failed: {p.name}: {error}", flush=True)
        print(f"gather the results: python -m src.analyze sweep {root}", flush=True)
        if failed:  # the sweep's exit status says so, for scripts and CI
            raise SystemExit(1)


def job_number(path: Path) -> tuple[int, str]:
    """Sort key of a sweep's job folders: '10_small' after '9_tiny'."""
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)
