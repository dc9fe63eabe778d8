"""The one-minute tour (src/demo.py) runs end to end, shrunk with --tiny, and prints its three parts."""

import logging

import pytest

from src.demo import main


@pytest.fixture
def logging_levels():
    """The demo quietens Lightning's and the project's loggers for its own run: put them back for the next tests."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "src")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.slow  # trains a run
def test_demo_tiny(tmp_path, capsys, logging_levels):
    out = tmp_path / "demo"
    assert main(["--tiny", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(a) Prototype accounting" in text and "(b) Full accounting" in text and "15.24×" in text  # 1. costs
    assert "speed-up vs SDPA" in text and "indexer+softmax" in text  # 2. timings
    assert "Final Results:" in text and "KeySelector top-1 accuracy" in text  # 3. pipeline
    assert "(prototype: 9.2%, random tokens)" in text  # the prototype's figure, from the one place it is written
    assert "total" in text and str(out) in text
    assert (out / "metrics.json").is_file()


def test_a_bad_argument_is_one_line(capsys):
    assert main(["--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: --bogus") and err.count("\n") == 1
