"""The accounting (src/costs/accounting.py): layers and models, keys read, the prototype's tables, crossovers, a run's
FLOP columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.analysis.costs import prototype_markdown
from src.costs import accounting as costs
from src.costs import formulas
from src.costs.accounting import PAIRS, ComponentSizes, model_grid
from src.costs.formulas import Cost
from src.report.tables import megabytes, millions, times

ROOT = Path(__file__).resolve().parents[2]


def test_every_pair_of_the_framework_is_counted():
    from src.approximators import APPROXIMATORS
    from src.selectors import SELECTORS

    assert set(PAIRS) == {f"{s}+{a}" for s in SELECTORS for a in APPROXIMATORS}


def test_layers_sum_every_head():
    # d=4, 2 heads of 2, T=4, k=2: per head oracle (20, 10) + softmax (32, 40) = (52, 50)
    assert costs.sparse_layer("oracle+softmax", d_model=4, n_head=2, T=4, k=2) == Cost(macs=104, ops=100)
    assert costs.dense_layer(d_model=4, n_head=2, T=4) == Cost(macs=80, ops=100)


def test_backward_counts_the_attention_three_times_and_the_selection_once():
    # the same layer forward + backward: softmax (32, 40) three times, the oracle's selection (20, 10) once
    assert costs.sparse_layer("oracle+softmax", 4, 2, 4, 2, backward=True) == Cost(macs=2 * (20 + 96),
                                                                                   ops=2 * (10 + 120))
    assert costs.dense_layer(4, 2, 4, backward=True) == Cost(macs=240, ops=300)


def test_keys():
    """Keys read follow the hybrid's own rule (Budget.keys_read): T/8 by default, at least one, at most T, whole
    blocks for a block selector (a block may pass T: its slots past T are invalid, but the approximator's width)."""
    assert costs.keys_read("indexer", 64) == 8 and costs.keys_read("indexer", 4) == 1  # T/8, at least one
    assert costs.keys_read("indexer", 64, k=8) == 8 and costs.keys_read("indexer", 16, k=32) == 16  # fixed, <= T
    assert costs.keys_read("block", 256, sizes=ComponentSizes(block=64)) == 64  # T/8 = 32 -> one whole block
    assert costs.keys_read("block", 32, sizes=ComponentSizes(block=64)) == 64  # one whole block, half past T
    assert costs.budget_of(512).blocks(4096, 64) == 8 and costs.budget_of(8).blocks(100, 128) == 1
    assert costs.keys_read("indexer", 256) == 32 and costs.keys_read("block", 4096, 0.25, ComponentSizes()) == 1024


def test_pair_cost_model_totals():
    size = costs.ModelSize("t", d_model=8, n_head=2, seq_len=4)
    r = costs.pair_cost(size, "oracle+softmax", n_layer=3, k=2)
    dense, sparse, rest = costs.dense_layer(8, 2, 4), costs.sparse_layer("oracle+softmax", 8, 2, 4, 2), Cost(3072)
    assert r.dense_model_flops == 3 * (dense.flops + rest.flops)
    assert r.sparse_model_flops == 3 * (sparse.flops + rest.flops)
    assert r.attn_speedup == pytest.approx(dense.flops / sparse.flops)
    assert r.model_speedup == pytest.approx((dense.flops + rest.flops) / (sparse.flops + rest.flops))
    assert r.attn_share == pytest.approx(dense.flops / (dense.flops + rest.flops))


def test_unknown_pair():
    with pytest.raises(ValueError, match="unknown pair"):
        costs.sparse_layer("mlp+nope", 64, 1, 16)


def test_crossover_is_the_first_cheaper_seq_len():
    d, nh = 1024, 16
    T = costs.crossover_seq_len("indexer+softmax", d, nh, seq_lens=range(8, 4097))
    assert T is not None
    assert costs.sparse_layer("indexer+softmax", d, nh, T).flops < costs.dense_layer(d, nh, T).flops
    assert costs.sparse_layer("indexer+softmax", d, nh, T - 1).flops >= costs.dense_layer(d, nh, T - 1).flops
    assert costs.crossover_seq_len("indexer+softmax", d, nh) == 1024  # powers of two by default
    assert costs.crossover_seq_len("mlp+mlp", d, nh) is None  # k = T/8 keys through an MLP never pays off


@pytest.mark.parametrize(
    "d_model, T, dense, sparse, speedup",
    [(128, 64, "1.0", "5.8", "0.18×"), (256, 128, "8.4", "12.6", "0.67×"), (512, 256, "67.1", "29.4", "2.29×"),
     (768, 512, "402.7", "75.5", "5.33×"), (1024, 1024, "2,147.5", "218.1", "9.85×"),
     (1280, 2048, "10,737.4", "704.6", "15.24×")],
)
def test_prototype_compute_check_values(d_model, T, dense, sparse, speedup):
    (row,) = [r for r in costs.prototype_compute_rows() if (r.d_model, r.seq_len) == (d_model, T)]
    assert (millions(row.dense_macs), millions(row.sparse_macs), times(row.speedup)) == (dense, sparse, speedup)
    label = f"{d_model}d / {T}" + (" ¹" if d_model == 1280 else "")
    assert f"| {label} | {dense} | {sparse} | {speedup} |" in prototype_markdown()


def test_prototype_memory_check_value():
    (row,) = [r for r in costs.prototype_memory_rows() if (r.d_model, r.seq_len) == (512, 512)]
    assert (row.n_head, row.k) == (8, 32)
    assert (megabytes(row.dense_bytes), megabytes(row.sparse_bytes)) == ("67.1", "4.2")
    assert [(r.d_model, r.seq_len) for r in costs.prototype_memory_rows()] == sorted(
        [(s.d_model, s.seq_len) for s in model_grid()] + [(512, 512)])


@pytest.mark.parametrize(
    "line",  # B·nh·T²·4 against B·nh·T·k·4 bytes, B = 8, nh = d/64, k = min(32, T/8), worked out by hand
    ["| 128d / 64 | 2 | 8 | 0.3 | 0.033 | 8× |", "| 256d / 128 | 4 | 16 | 2.1 | 0.3 | 8× |",
     "| 512d / 256 | 8 | 32 | 16.8 | 2.1 | 8× |", "| 512d / 512 ² | 8 | 32 | 67.1 | 4.2 | 16× |",
     "| 768d / 512 | 12 | 32 | 100.7 | 6.3 | 16× |", "| 1024d / 1024 | 16 | 32 | 536.9 | 16.8 | 32× |",
     "| 1280d / 2048 | 20 | 32 | 2,684.4 | 41.9 | 64× |"],
)
def test_prototype_memory_rows(line):
    assert line in prototype_markdown()


def test_full_accounting_never_below_prototype():
    proto = {(r.d_model, r.seq_len): r for r in costs.prototype_compute_rows()}
    as_prototype = ComponentSizes(selector_hidden=formulas.PROTO_HIDDEN, approximator_hidden=formulas.PROTO_HIDDEN)
    for sizes, k in ((as_prototype, formulas.PROTO_K), (ComponentSizes(), None)):
        for r in costs.full_rows(k=k, sizes=sizes, pairs=["mlp+mlp"]):
            p = proto[r.size.d_model, r.size.seq_len]
            assert r.dense_attn.flops >= p.dense_macs
            assert r.sparse_attn.flops >= p.sparse_macs
    # at the prototype's own sizes, every head counted: exactly n_head x 2 x its one head, plus the top-k
    for r in costs.full_rows(k=formulas.PROTO_K, sizes=as_prototype, pairs=["mlp+mlp"]):
        T = r.size.seq_len
        assert r.sparse_attn.flops == r.size.n_head * (2 * formulas.prototype_sparse_macs(T) + T * T)


def test_grid_matches_model_configs():
    for s in model_grid():
        cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{s.name}.yaml").read_text())
        assert (cfg["d_model"], cfg["n_head"], cfg["seq_len"]) == (s.d_model, s.n_head, s.seq_len)
        assert s.head_dim == formulas.PROTO_HEAD_DIM


def test_flops_of_a_partly_sparse_hybrid():
    cfg = {"model": {"d_model": 256, "n_head": 4, "seq_len": 128, "n_layer": 4},
           "hybrid": {"layers": [0], "heads": [0, 1], "top_k": 16},
           "selector": {"name": "indexer", "d_index": 16}, "approximator": {"name": "softmax"}}
    got = costs.flops_columns(cfg)
    dense = costs.dense_layer(256, 4, 128).flops
    sparse = costs.sparse_layer("indexer+softmax", 256, 4, 128, 16).flops
    rest = formulas.rest_of_layer(256, 128).flops
    assert got["sparse_heads"] == 2
    assert got["dense_model_flops"] == 4 * (rest + dense)
    assert got["sparse_model_flops"] == 3 * (rest + dense) + rest + sparse // 2 + dense // 2
