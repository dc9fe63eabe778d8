"""``python -m src.bench --train`` (src/bench/training.py): a whole training step, dense against natively sparse, at
tiny sizes -- the rows, the FLOP limits, the files and bad arguments."""

from __future__ import annotations

import json

import pytest

from src.bench.__main__ import main as bench_main
from src.bench.training import TrainSettings, config, flops
from src.costs.accounting import ComponentSizes, dense_layer, model_flops, sparse_layer

TINY = ["--train", "--lens", "64,128", "--d-model", "32", "--n-head", "2", "--n-layer", "2", "--budget", "16",
        "--block-size", "8", "--repeats", "1", "--no-memory"]


def test_rows_files_and_table(tmp_path, capsys):
    assert bench_main([*TINY, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "train.json").read_text())["rows"]
    assert [(r["T"], r["variant"]) for r in rows] == [(T, v) for T in (64, 128) for v in ("dense", "moba",
                                                                                         "query_moba")]
    assert all(r["median_ms"] > 0 and r["tokens_per_s"] > 0 and r["speedup"] > 0 for r in rows)
    dense, moba = rows[3], rows[4]
    assert dense["speedup"] == 1.0 and dense["flop_limit"] == 1.0
    assert moba["flop_limit"] > rows[1]["flop_limit"] > 1  # the longer, the more the budget drops
    for ext in ("csv", "md", "png"):
        assert (tmp_path / f"train.{ext}").stat().st_size > 0
    assert "| 128 | moba |" in capsys.readouterr().out


def test_the_flop_limit_counts_the_attention_three_times_and_the_gate_once():
    s = TrainSettings(d_model=32, n_head=2, n_layer=2, vocab=65, budget=16, block_size=8)
    dense, sparse = config(128, "none", s), config(128, "moba", s)
    sizes = ComponentSizes(block=8)
    assert flops(dense) == 3 * model_flops(32, 2, 2, 128, 65)
    assert flops(dense) - flops(sparse) == 2 * (3 * dense_layer(32, 2, 128, sizes).flops
                                               - sparse_layer("moba+softmax", 32, 2, 128, 16, sizes, True).flops)


@pytest.mark.parametrize("args,message", [
    (["--lens", "8"], "sequence length 8 is shorter than the budget of 16 keys"),
    (["--gates", "nsa"], "gate 'nsa' is unknown"),
    (["--d-model", "33"], "--d-model 33 must be divisible by --n-head 2"),
    (["--repeats", "0"], "--repeats must be positive"),
])
def test_bad_arguments_are_one_line(args, message, capsys):
    assert bench_main([*TINY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
