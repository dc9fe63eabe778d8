"""``python -m src.analyze costs`` (src/analysis/costs.py): its tables, files and bad arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.analysis.costs import prototype_markdown
from src.analyze import main
from src.costs.accounting import LEARNED_PAIRS, model_grid

ROOT = Path(__file__).resolve().parents[2]


def test_prototype_labels_say_what_is_counted():
    md = prototype_markdown()
    assert "ONE head's selector + approximator, nothing for the other heads" in md
    assert "MACs" in md and '"2048d"' in md and "attention-probability matrices only" in md


def test_cli_costs_writes_files(tmp_path, capsys):
    out = tmp_path / "costs"
    assert main(["costs", "--out", str(out)]) == 0
    names = {"costs_prototype.md", "costs_full.md", "costs_prototype.csv", "costs_full.csv",
             "memory_prototype.csv", "compute_scaling.png"}
    assert names <= {p.name for p in out.iterdir()}
    assert (out / "compute_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| 512d / 256 | 67.1 | 29.4 | 2.29× |" in printed and "Full accounting" in printed
    assert (out / "costs_full.csv").read_text().count("\n") == 1 + len(model_grid()) * len(LEARNED_PAIRS)


@pytest.mark.parametrize("argv", [[], ["nope"], ["costs", "--k", "0"], ["costs", "--n-layer", "x"]])
def test_cli_bad_arguments(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["costs", "--out", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot write to")
