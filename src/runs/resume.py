"""Resume: ``python -m src.train resume=RUN [the run's overrides]`` continues a run from RUN/checkpoints/last.ckpt.

A resume writes only into the run it names, continues only a run of the same stage with something left to do (an
unfinished run, or a finished one asked for more steps), and only with the settings it was started with; anything
else is one line before any work (src/train.py leaves the folder as it was).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.runs.checkpoints import read_checkpoint
from src.runs.folders import RECORD, run_folder
from src.runs.lookup import mismatch
from src.runs.records import read_json

STAGE_STEPS = {"teacher": "trainer.max_steps", "distill_selector": "selector.max_steps",
               "distill_approximator": "approximator.max_steps",
               "finetune": "finetune.max_steps"}  # the stages that train, and their step setting


def original_overrides(run: Path) -> list[str]:
    """The command-line overrides a run was started with (its .hydra/overrides.yaml), [] when unknown."""
    f = run / RECORD / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.load(f) if not str(o).startswith("resume=")] if f.is_file() else []
    except Exception:  # noqa: BLE001  a damaged record only loses the hint
        return []


def again(run_dir: Path) -> str:
    """The command that continues ``run_dir`` with the overrides it was started with."""
    return f"python -m src.train resume={run_dir} {' '.join(original_overrides(run_dir))}".strip()


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """``resume=`` must name ``run_dir``, a run of the same stage that has something left to do: an unfinished run,
    or a finished one asked for more steps. One line otherwise, before anything is written."""
    given = Path(cfg.resume).expanduser()
    start_again = (f"start a new run without resume=, or give a run folder such as "
                   f"{cfg.paths.outputs}/{cfg.stage}/.../TIMESTAMP")
    if not given.exists():
        raise UserError(f"resume={cfg.resume}: no such run folder or checkpoint; {start_again}")
    if given.is_file() and given.parent.name != "checkpoints":
        raise UserError(f"resume={cfg.resume} is not a checkpoint of a run folder (RUN/checkpoints/last.ckpt): give "
                        "the run folder itself")
    folder = run_folder(cfg.resume)
    if folder is None:
        raise UserError(f"resume={cfg.resume} is not a run folder (it has no {RECORD}/config.yaml); {start_again}")
    if folder.resolve() != run_dir.resolve():
        raise UserError(f"resume={cfg.resume} names {folder}, but this run writes to {run_dir}: give the run folder "
                        "itself (and no hydra.run.dir)")
    stage = OmegaConf.load(run_dir / RECORD / "config.yaml").get("stage")
    if stage != cfg.stage:
        raise UserError(f"{run_dir} is a {stage} run, but this command runs stage {cfg.stage}: resume it with "
                        f"the settings it was started with: {again(run_dir)}")
    done = read_json(run_dir / "metrics.json")
    if done is not None:
        steps = done.get("steps")
        wanted = OmegaConf.select(cfg, STAGE_STEPS[cfg.stage]) if cfg.stage in STAGE_STEPS else None
        if steps is None or wanted is None or steps >= wanted:
            more = (f"; to train it longer, give {STAGE_STEPS[cfg.stage]} above {steps}"
                    if steps is not None and wanted is not None else "")
            raise UserError(f"{run_dir} is finished (metrics.json): nothing to resume{more}; its results stay as "
                            "they are")


def resume_point(cfg: DictConfig, run_dir: Path, stage: str) -> tuple[str, dict] | None:
    """Where ``stage`` continues from when this command resumes (``resume=``): its last.ckpt (path, checkpoint),
    readable and made with this run's settings -- required when the stage is the command's own, optional when it is
    a step of a resumed pipeline (a step that saved none starts from the beginning). None: start."""
    if not cfg.resume:
        return None
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        if cfg.stage != stage:
            return None
        raise UserError(f"resume: no checkpoint at {ckpt}; the run saved none (it stopped before its first "
                        "validation): start it again without resume=")
    checkpoint = read_checkpoint(ckpt, make="the run cannot continue from it; start it again without resume=")
    diff = mismatch(checkpoint, cfg, stage)
    if diff:
        top = run_folder(str(run_dir)) or run_dir
        raise UserError(f"{ckpt} was trained with {diff}: resume it with the settings it was started with: "
                        f"{again(top)}")
    return str(ckpt), checkpoint


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: ``resume=`` its top folder (a pipeline's, for one of its steps) with
    this command line's overrides."""
    top, task = run_dir, []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        top, task = Path(hc.runtime.output_dir), [o for o in hc.overrides.task if not o.startswith("resume=")]
    return " ".join(["python -m src.train", f"resume={top}", *task])
