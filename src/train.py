"""Entry point of every stage: ``python -m src.train [+experiment=NAME] [overrides...]``.

A thin ``@hydra.main`` around :func:`train`, which tests call directly with a composed config.
Bad input (:class:`src.errors.UserError`) ends the job with one line naming the problem and its fix.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.config import register_configs
from src.errors import UserError
from src.runs import register_resolvers, write_json

log = logging.getLogger("src.train")

register_configs()
register_resolvers()
# a resumed run reshuffles its training windows from the restored step (src/data.py), which is what we want
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def stages() -> dict:
    """Stage name -> ``run(cfg, run_dir) -> dict``; imported lazily so that `--help` stays quick."""
    from src.stages import teacher

    return {"teacher": teacher.run}


def train(cfg: DictConfig, run_dir: Path) -> dict:
    table = stages()
    if cfg.stage not in table:
        raise UserError(f"stage={cfg.stage!r} is unknown: use one of {', '.join(table)} (or +experiment=NAME)")
    run_dir.mkdir(parents=True, exist_ok=True)
    result = table[cfg.stage](cfg, run_dir)
    return result


def _print_summary(result: dict) -> None:
    lines = [f"run folder: {result.get('run_dir')}"]
    if result.get("checkpoint"):
        lines.append(f"checkpoint: {result['checkpoint']}")
    for key in ("best_val_loss", "test/loss", "test/ppl", "test/acc"):
        if result.get(key) is not None:
            lines.append(f"{key}: {result[key]:.4f}" + (" nats/char" if key.endswith("loss") else ""))
    lines.append(f"TensorBoard: tensorboard --logdir {result.get('run_dir')}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        result = train(cfg, run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        log.error("error: %s", e)
        write_json(run_dir / "error.json", {"error": str(e), "stage": cfg.stage})
        if hc.mode == RunMode.MULTIRUN:  # one bad job must not stop the sweep
            return None
        sys.exit(2)
    _print_summary(result)
    return result.get("best_val_loss")


if __name__ == "__main__":
    main()
