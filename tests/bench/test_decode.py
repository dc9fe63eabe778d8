"""``python -m src.bench --decode`` (src/bench/decode.py): the cells, files and bad arguments at tiny sizes."""

from __future__ import annotations

import json

import pytest

from src.bench.__main__ import main as bench_main
from src.bench.decode import DecodeSettings, run

TINY = ["--decode", "--lens", "256", "--model-lens", "128", "--d-model", "64", "--n-head", "2", "--n-layer", "2",
        "--budget", "64", "--block-size", "16", "--d-index", "8", "--min-run-time", "0.01"]


def test_rows_files_and_table(tmp_path, capsys):
    assert bench_main([*TINY, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert [(r["kind"], r["L"], r["variant"]) for r in rows] == [
        ("layer", 256, "sdpa"), ("layer", 256, "block, per token"), ("layer", 256, "block, scoring step"),
        ("model", 128, "sdpa"), ("model", 128, "block, per token")]
    assert all(r["median_ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[1]["keys_read"] == 64 and rows[3]["tokens_per_s"] > 0
    assert rows[1]["flop_limit"] > rows[2]["flop_limit"] > 0  # the scoring step does more work than the average
    for ext in ("csv", "md", "png"):
        assert (tmp_path / f"decode.{ext}").stat().st_size > 0
    assert "| model (2 layers), 1 token | 128 | block, per token | 64 |" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--lens", "32"], "cache length 32 is shorter than the budget of 64 keys"),
    (["--d-model", "65"], "--d-model 65 must be divisible by --n-head 2"),
    (["--dtype", "fp8"], "--dtype 'fp8' is unknown"),
    (["--budget", "0"], "--budget must be positive"),
    (["--lens", "abc"], "expected comma-separated integers"),
])
def test_bad_arguments_are_one_line(args, message, capsys):
    assert bench_main([*TINY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_run_skips_nothing_at_tiny_sizes():
    rows = run(DecodeSettings(lens=(128,), model_lens=(), d_model=32, n_head=2, budget=32, block_size=16,
                              d_index=4, min_run_time=0.01), log=lambda line: None)
    assert len(rows) == 3 and {r["kind"] for r in rows} == {"layer"}


def test_every_option_has_help_text_and_one_default():
    from src.bench.decode import build_parser
    from tests.bench.test_layer import each_help

    helps = each_help(build_parser())
    assert all(text and text.count("default") <= 1 for text in helps.values()), helps
    assert helps["--budget"] == ("keys each query of the sparse decoder reads (rounded up to whole blocks) "
                                 "(default: 512)")
