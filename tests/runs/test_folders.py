"""Run folders (src/runs/folders.py): the folder resume= names, job order."""

from __future__ import annotations

from src.runs.folders import job_number, run_dir_for, run_folder


def test_run_folder_of_resume(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("stage: pipeline\n")
    (run / "teacher" / "checkpoints").mkdir(parents=True)
    ckpt = run / "teacher" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    stray = tmp_path / "x.ckpt"
    stray.write_bytes(b"x")
    assert run_folder(str(run)) == run
    assert run_folder(str(ckpt)) == run  # a pipeline step's checkpoint names its pipeline
    assert run_folder(str(run / "teacher")) == run
    assert run_folder(str(stray)) is None and run_folder(str(tmp_path / "nothing")) is None
    outputs = str(tmp_path / "outputs")
    assert run_dir_for(str(ckpt), "teacher", "baby", outputs) == str(run)
    fresh = run_dir_for(str(stray), "teacher", "baby", outputs)  # never the stray file's folder: a fresh run folder
    assert fresh.startswith(str(tmp_path / "outputs" / "teacher" / "baby"))


def test_job_number_sorts_numerically(tmp_path):
    names = ["10_small", "9_tiny", "0_tiny"]
    assert [p.name for p in sorted((tmp_path / n for n in names), key=job_number)] == ["0_tiny", "9_tiny", "10_small"]
