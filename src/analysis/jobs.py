"""Reading a multirun's job folders: the one job reader of the analyses (``analyze sweep``, ``analyze budget``) and
the notebook -- each job's resolved config, whether it finished, what it measured, and which settings the sweep
varied."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from src.errors import UserError
from src.runs.folders import RECORD, job_folders, register_resolvers
from src.runs.records import read_json


def jobs_of(root: Path, make: str) -> list[Path]:
    """The job folders of the multirun folder ``root``; one line naming ``make`` (the command that makes such a
    multirun) when it is no such folder."""
    if not Path(root).is_dir():
        raise UserError(f"{root} is not a folder: give the folder of a multirun, e.g. outputs/multirun/<timestamp> "
                        f"(`{make}` prints it at the end)")
    jobs = job_folders(root)
    if not jobs:
        raise UserError(f"{root} holds no job folders (sub-folders with {RECORD}/config.yaml): give the folder that "
                        f"a multirun made; `{make}` prints it at the end")
    return jobs


def job_config(job: Path) -> dict:
    """The job's composed config, resolved (the pipeline's own copy when it finished, else Hydra's)."""
    metrics = read_json(job / "metrics.json")
    if metrics and isinstance(metrics.get("config"), dict):
        return metrics["config"]
    register_resolvers()
    cfg = OmegaConf.load(job / RECORD / "config.yaml")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001  an interpolation that cannot resolve here: keep what can be read
        return OmegaConf.to_container(cfg, resolve=False)


def by_stage(metrics: dict) -> dict:
    """A run's metrics.json in a pipeline's shape: a finished evaluate or teacher run's numbers under "evaluate" or
    "teacher", as a pipeline's metrics.json holds its steps'."""
    stage = metrics.get("stage")
    return {stage: metrics} if stage in ("evaluate", "teacher") else metrics


def job_status(job: Path, stages: tuple[str, ...] = ("evaluate",)) -> tuple[dict, dict | None]:
    """A job's ``status`` (ok, failed, unfinished, not a pipeline) and ``error`` columns, and its metrics.json
    (``by_stage``) when it finished one of ``stages``: a pipeline or an evaluate run, by default."""
    metrics, error = read_json(job / "metrics.json"), read_json(job / "error.json")
    if error:
        return {"status": "failed", "error": str(error.get("error") or "").splitlines()[0] if error.get("error")
                else ""}, None
    if not metrics:
        return {"status": "unfinished", "error": "no metrics.json: the job was stopped or is still running"}, None
    if not any(stage in by_stage(metrics) for stage in stages):
        return {"status": "not a pipeline", "error": f"a finished {metrics.get('stage', 'other')} run: no hybrid to "
                                                     "compare"}, None
    return {"status": "ok"}, by_stage(metrics)


def overrides(job: Path) -> dict[str, str]:
    """The command-line settings a job ran with (its .hydra/overrides.yaml: the sweep's values and the fixed ones)."""
    try:
        items = OmegaConf.load(job / RECORD / "overrides.yaml")
    except Exception:  # noqa: BLE001  no record: nothing known
        return {}
    return dict(str(o).lstrip("+~").split("=", 1) for o in items if "=" in str(o))


def swept(jobs: list[Path]) -> dict[str, str]:
    """Job name -> the settings the multirun varied, as they were for that job ('hybrid.budget=4'); '' for all
    when nothing varied."""
    settings = {job.name: overrides(job) for job in jobs}
    keys = sorted({k for s in settings.values() for k in s})
    varied = [k for k in keys if len({s.get(k) for s in settings.values()}) > 1]
    return {name: " ".join(f"{k}={s.get(k, '–')}" for k in varied) for name, s in settings.items()}
