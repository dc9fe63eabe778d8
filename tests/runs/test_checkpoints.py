"""Reading checkpoints (src/runs/checkpoints.py)."""

from __future__ import annotations

import pytest
import torch

from src.errors import UserError
from src.runs.checkpoints import is_hybrid, read_checkpoint, run_checkpoints


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(UserError, match="no teacher checkpoint at .*: train one"):
        read_checkpoint(tmp_path / "none.ckpt", "teacher", "train one")
    (tmp_path / "junk.ckpt").write_text("junk")
    with pytest.raises(UserError, match="cannot read checkpoint .*junk.ckpt"):
        read_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"hyper_parameters": {"model": {}}, "state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="is not a checkpoint of this project"):
        read_checkpoint(tmp_path / "other.ckpt")
    good = {"hyper_parameters": {"model": {}, "vocab": ["a"]}, "state_dict": {}}
    torch.save(good, tmp_path / "good.ckpt")
    assert not is_hybrid(read_checkpoint(tmp_path / "good.ckpt"))
    with pytest.raises(UserError, match="is a teacher's checkpoint, not an indexer selector's"):
        read_checkpoint(tmp_path / "good.ckpt", "indexer selector", stage="distill_selector")
    hybrid = {"hyper_parameters": {**good["hyper_parameters"], "hybrid": {}, "selector": {}, "approximator": {}},
              "state_dict": {}}
    torch.save(hybrid, tmp_path / "hybrid.ckpt")
    assert is_hybrid(read_checkpoint(tmp_path / "hybrid.ckpt", stage="distill_approximator"))
    with pytest.raises(UserError, match="is a distilled selector's or hybrid's checkpoint, not a teacher's"):
        read_checkpoint(tmp_path / "hybrid.ckpt", "teacher", stage="teacher")


def test_run_checkpoints_order(tmp_path):
    for folder, name in (("approximator", "last.ckpt"), ("teacher", "best.ckpt"), ("teacher", "last.ckpt")):
        (tmp_path / folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "checkpoints" / name).write_bytes(b"x")
    found = run_checkpoints(tmp_path, ("approximator", "", "teacher"))
    assert [str(p.relative_to(tmp_path)) for p in found] == [
        "approximator/checkpoints/last.ckpt", "teacher/checkpoints/best.ckpt", "teacher/checkpoints/last.ckpt"]
