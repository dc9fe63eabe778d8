"""Run folders: where a run writes (``paths.outputs``/STAGE/MODEL/TIMESTAMP, or the run it resumes), the job folders
of a multirun, and leaving a folder as it was when a command is refused."""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

RECORD = ".hydra"  # the folder that makes a folder a run's: how it was started (config.yaml, overrides.yaml)


@functools.lru_cache(maxsize=1)
def stamp() -> str:
    """This process's start, to the second: the name of the run folder (or resume record) it makes, the same however
    often Hydra resolves it."""
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


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
    return next((f for f in (p, p.parent) if (f / RECORD / "config.yaml").is_file()), None)


def run_dir_for(resume: str | None, stage: str, model_name: str, outputs: str = "outputs") -> str:
    """Hydra resolver behind ``hydra.run.dir``: a new timestamped folder under ``paths.outputs``, or the folder of
    the run to resume (never a folder that is not a run's: a wrong ``resume=`` gets a fresh folder, which the refusal
    then removes)."""
    folder = run_folder(resume) if resume else None
    if folder is not None:
        return str(folder)
    return str(Path(outputs) / stage / model_name / stamp())


def hydra_subdir_for(resume: str | None) -> str:
    """Hydra resolver behind ``hydra.output_subdir``: a resumed run keeps the config it was started with in
    .hydra/ and records the resuming command's beside it, in .hydra/resumed-TIMESTAMP/."""
    return f"{RECORD}/resumed-{stamp()}" if resume else RECORD


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", run_dir_for)
    if not OmegaConf.has_resolver("hydra_subdir"):
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir_for)
    if not OmegaConf.has_resolver("idiv"):  # e.g. hybrid.top_k: ${idiv:${model.seq_len},8}
        OmegaConf.register_new_resolver("idiv", lambda a, b: int(a) // int(b))


def job_number(path: Path) -> tuple[int, str]:
    """Sort key of a sweep's job folders: '10_small' after '9_tiny'."""
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def job_folders(root: Path) -> list[Path]:
    """The job folders of a multirun folder, in job order: the sub-folders Hydra made (they hold .hydra/config.yaml);
    [] when there are none."""
    if not Path(root).is_dir():
        return []
    return sorted((p for p in Path(root).iterdir() if p.is_dir() and (p / RECORD / "config.yaml").is_file()),
                  key=job_number)


@dataclass
class Snapshot:
    """What a run folder held when a command started in it, so that a refused command leaves it as it was: a folder
    this command made goes (with the empty folders above it, up to the outputs root), and a run it was to resume loses
    only what this command added (its record in .hydra/resumed-TIMESTAMP/, its lines in train.log)."""

    folder: Path
    fresh: bool  # made by this command: nothing in it but what Hydra wrote at the start
    record: Path | None  # the (sub)folder of .hydra/ that Hydra wrote for this command
    logs: dict[Path, int]  # each log file and its size at the start

    @classmethod
    def take(cls, folder: Path, record: str | None) -> Snapshot:
        folder = Path(folder)
        written = folder / record if record else None
        entries = list(folder.iterdir()) if folder.is_dir() else []
        hydra = folder / RECORD
        # Hydra's record for this command is all there is of .hydra/ (a resumed run's holds its first record too)
        only_ours = written is not None and (written == hydra or not hydra.is_dir()
                                              or list(hydra.iterdir()) == [written])
        fresh = folder.is_dir() and only_ours and all(p == hydra or p.suffix == ".log" for p in entries)
        logs = {p: p.stat().st_size for p in folder.glob("*.log")}
        return cls(folder, fresh, written, logs)

    def restore(self, outputs: Path | None = None) -> None:
        if self.fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
            parent, top = self.folder.parent, Path(outputs).resolve() if outputs else None
            while top is not None and parent.resolve() != top and top in parent.resolve().parents:
                try:
                    parent.rmdir()  # only an empty one
                except OSError:
                    break
                parent = parent.parent
            return
        if self.record is not None and self.record.name != RECORD:
            shutil.rmtree(self.record, ignore_errors=True)
        for log in self.folder.glob("*.log"):
            size = self.logs.get(log)
            if size is None:
                log.unlink(missing_ok=True)
            elif log.stat().st_size > size:
                with log.open("r+b") as f:
                    f.truncate(size)
