"""The command that makes what a run needs, for the one-line errors: ``+experiment=NAME``, the run's choice in each
group it depends on, and the overrides of this command line that touch those groups (e.g. ``model.n_layer=2``), so
that what it makes fits."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.config import hf_teacher

# what each stage's checkpoint depends on, and the experiment that makes it
MAKES = {
    "teacher": ("teacher", ("model", "data")),
    "distill_selector": ("distill_selector", ("model", "data", "selector", "hybrid")),
    "distill_approximator": ("pipeline", ("model", "data", "selector", "approximator", "hybrid")),
    "finetune": ("finetune", ("model", "data", "selector", "approximator", "hybrid")),
}


def make_command(experiment: str, cfg: DictConfig, groups: tuple[str, ...]) -> str:
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []  # none outside a Hydra job
    parts = [f"+experiment={experiment}"]
    for group in groups:
        hf = group == "model" and hf_teacher(cfg)
        if hf:  # a Hugging Face model: teacher=hf names it, model.* are its own
            parts += ["teacher=hf", f"teacher.hf.model={hf['model']}"]
        elif group in cfg and "name" in cfg[group]:
            parts.append(f"{group}={cfg[group].name}")
        parts += [o for o in task if o.split("=", 1)[0].lstrip("+~").startswith(f"{group}.")]
    corpus = cfg.data.filler if cfg.data.name == "recall" else cfg.data.name
    if "data" in groups and corpus == "text_file" and not any(p.startswith("data.path=") for p in parts):
        parts.append(f"data.path={cfg.data.path}")
    if "data" in groups and corpus == "python_source" and not any(p.startswith("data.package=") for p in parts):
        parts.append(f"data.package={cfg.data.package}")
    return "python -m src.train " + " ".join(dict.fromkeys(parts))


def command_for(stage: str, cfg: DictConfig) -> str:
    """The command that makes a ``stage`` checkpoint fitting this run."""
    experiment, groups = MAKES[stage]
    return make_command(experiment, cfg, groups)
