"""Shared fixtures: configs composed as the command line would, shrunk to tiny sizes, each test's runs in its own
outputs folder (``paths.outputs``); a tiny teacher and a tiny pipeline trained once for the whole session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning  # noqa: F401  imported before any test captures stderr: its console handler keeps a live stream
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
    "evaluate.kernels=[auto]",  # time the kernel the hybrid runs, not every kernel (flex compiles for seconds)
    "evaluate.repeats=1",
]
# the session pipeline's sparse parts: a block selector (blocks of 8) under a 16-key budget, softmax over the kept keys
PARTS = ["selector=block", "selector.block_size=8", "hybrid.budget=16", "selector.max_steps=2",
         "approximator.max_steps=2"]


# a test that needs a trained run (the session's, or one it trains itself) is an end-to-end test: marked slow, so
# that `make test-fast` (-m "not slow") is the unit tests alone; `make test` runs everything
TRAINED = {"pipeline_run", "teacher_run", "teacher_ckpt", "teacher_copy", "trained_parts", "budget_sweep", "curve"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINED & set(getattr(item, "fixturenames", ())) or "flex" in item.name:  # flex: a compiled kernel
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_process_in_a_unit_test(request, monkeypatch):
    """A unit test (one not marked slow) starts no process -- `make test-fast` runs in this one -- or fails saying
    so."""
    if request.node.get_closest_marker("slow") is None:
        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.name} starts a process: mark it @pytest.mark.slow")

        monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


def compose_config(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose ``conf/`` exactly as ``python -m src.train`` would (Hydra's resolvers included)."""
    import src.sample  # noqa: F401  registers the sampling schema
    import src.train  # noqa: F401  registers the schemas and resolvers

    GlobalHydra.instance().clear()
    folder = CONF / "cli" if config_name == "sample" else CONF  # the tools' configs sit away from the groups
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def tiny(outputs: Path, *extra: str):
    """A tiny config whose runs look for earlier runs under ``outputs`` only."""
    return compose_config(TINY + [f"paths.outputs={outputs}", *extra])


@pytest.fixture
def tiny_cfg(tmp_path):
    """Tiny configs whose runs look for earlier runs in this test's own outputs folder only (paths.outputs)."""
    def make(*extra: str):
        return tiny(tmp_path / "outputs", *extra)

    return make


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """A tiny pipeline -- its teacher (4 real steps, so it leaves best.ckpt), a block selector, a softmax hybrid,
    the evaluation -- run once for the whole session: its folder (teacher/, selector/, approximator/, evaluate/,
    results.md). Read it; copy it (``copy_run``) to change it."""
    from src.train import train

    root = tmp_path_factory.mktemp("session")
    run = root / "outputs" / "pipeline" / "tiny" / "run"
    train(tiny(root / "outputs", "+experiment=pipeline", *PARTS), run)
    return run


@pytest.fixture(scope="session")
def teacher_run(pipeline_run) -> dict:
    """The session pipeline's teacher: its result (``checkpoint``, ``run_dir``, ``best_val_loss``, ...)."""
    from src.runs.records import read_json

    return read_json(pipeline_run / "teacher" / "metrics.json")


@pytest.fixture(scope="session")
def teacher_ckpt(teacher_run) -> str:
    """The session teacher's checkpoint (best.ckpt)."""
    return teacher_run["checkpoint"]


def multirun(root: Path, jobs: list[list[str]], common: list[str]) -> list[Path]:
    """A multirun folder made in this process, as Hydra makes one: each job ``root/N_tiny`` runs ``src.train.train``
    with ``common + jobs[N]`` and records its overrides (.hydra/overrides.yaml); a job refused in one line leaves
    error.json, as src/train.py's main does in a multirun."""
    from omegaconf import OmegaConf

    from src.errors import UserError
    from src.runs.records import write_json
    from src.train import train

    folders = []
    for i, overrides in enumerate(jobs):
        folder = root / f"{i}_tiny"
        (folder / ".hydra").mkdir(parents=True)
        cfg = tiny(root.parent / "outputs", *common, *overrides)
        OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create([*common, *overrides]), folder / ".hydra" / "overrides.yaml")
        try:
            train(cfg, folder)
        except UserError as e:
            write_json(folder / "error.json", {"error": str(e), "stage": cfg.stage})
        folders.append(folder)
    return folders


def copy_run(run: Path, to: Path, overrides: tuple[str, ...] = ()) -> Path:
    """A copy of a session run to change (resume it, damage it) without touching the shared one. A pipeline's step
    (e.g. the session teacher) becomes a run folder of its own: its stage's config, recorded as Hydra records one,
    with the command-line ``overrides`` it is said to have been started with."""
    from omegaconf import OmegaConf

    shutil.copytree(run, to)
    record = to / ".hydra"
    if not (record / "config.yaml").is_file():
        stage = {"teacher": "teacher", "selector": "distill_selector", "approximator": "distill_approximator"}[run.name]
        cfg = OmegaConf.load(run.parent / ".hydra" / "config.yaml")
        cfg.stage = stage
        record.mkdir()
        OmegaConf.save(cfg, record / "config.yaml")
        OmegaConf.save(OmegaConf.create(list(overrides)), record / "overrides.yaml")
    return to


@pytest.fixture
def teacher_copy(tmp_path, teacher_run) -> Path:
    """A run folder of the session teacher (4 steps, finished) that this test may change."""
    return copy_run(Path(teacher_run["run_dir"]), tmp_path / "outputs" / "teacher" / "tiny" / "copy")


def run_main(*argv: str) -> int:
    """``python -m src.train ARGV`` in this process -- Hydra's own entry point, run folder and logging included --
    without starting one: its exit status."""
    import logging

    import src.train

    GlobalHydra.instance().clear()
    saved, handlers = sys.argv, list(logging.getLogger().handlers)
    sys.argv = ["src/train.py", *argv]
    os.environ["HYDRA_MAIN_MODULE"] = "__main__"  # conf/ is found next to src/train.py, as with python -m
    try:
        src.train.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
        del os.environ["HYDRA_MAIN_MODULE"]
        for handler in logging.getLogger().handlers:  # Hydra's file handler: closed, so the run folder is free
            if handler not in handlers:
                handler.close()
                logging.getLogger().removeHandler(handler)
        GlobalHydra.instance().clear()


def run_cli(module: str, *args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` as a user would; returns the finished process (stdout + stderr captured).
    Only the tests marked slow start processes (``make test-fast`` leaves them out)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
