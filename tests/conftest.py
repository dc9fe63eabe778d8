"""Shared fixtures: configs composed as the command line would, shrunk to tiny sizes, writing to a temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# tiny, fast settings shared by the tests that run a stage
TINY = [
    "model=tiny",
    "model.n_layer=2",
    "model.seq_len=32",
    "data=synthetic",
    "data.num_tokens=20000",
    "data.batch_size=8",
    "trainer.max_steps=4",
    "trainer.val_every=2",
    "trainer.limit_val_batches=2",
    "trainer.log_every=1",
    "trainer.enable_progress_bar=false",
    "trainer.sample_chars=20",
]


def compose_config(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose ``conf/`` exactly as ``python -m src.train`` would (Hydra's resolvers included)."""
    import src.sample  # noqa: F401  registers the sampling schema
    import src.train  # noqa: F401  registers the schemas and resolvers

    GlobalHydra.instance().clear()
    folder = CONF / "cli" if config_name == "sample" else CONF  # the tools' configs sit away from the groups
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


@pytest.fixture
def tiny_cfg(tmp_path):
    """Tiny configs whose runs look for earlier runs in this test's own outputs folder only (paths.outputs)."""
    def make(*extra: str):
        return compose_config(TINY + [f"paths.outputs={tmp_path / 'outputs'}", *extra])

    return make


def run_cli(module: str, *args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` as a user would; returns the finished process (stdout + stderr captured)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
