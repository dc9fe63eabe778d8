"""The analytic cost model: each formula against a count done by hand, the prototype's README reproduced, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src import costs
from src.analyze import main, megabytes, millions, prototype_markdown, times
from src.costs import GRID, LEARNED_PAIRS, PAIRS, ComponentSizes, Cost

ROOT = Path(__file__).resolve().parents[1]


# ---- counting helpers ----------------------------------------------------------------------------------------


def test_causal_pairs_by_enumeration():
    for T in (1, 2, 4, 7, 64):
        assert costs.causal_pairs(T) == sum(1 for t in range(T) for s in range(T) if s <= t)
    assert costs.causal_pairs(4) == 10  # 1 + 2 + 3 + 4


def test_causal_block_pairs_by_enumeration():
    # T=4, B=2: queries 0,1 see block 0; queries 2,3 see blocks 0,1 -> 1 + 1 + 2 + 2
    assert costs.causal_block_pairs(4, 2) == 6
    for T, B in ((64, 64), (100, 64), (130, 16), (7, 3)):
        blocks = range(-(-T // B))
        assert costs.causal_block_pairs(T, B) == sum(1 for t in range(T) for b in blocks if b * B <= t)


def test_cost_arithmetic():
    c = Cost(macs=3, ops=4) + Cost(macs=1, ops=1)
    assert c == Cost(4, 5) and c.flops == 2 * 4 + 5
    assert 3 * c == c * 3 == Cost(12, 15)


# ---- components, per head: small cases by hand (T=4, hs=2) -----------------------------------------------------


def test_dense_attention():
    # QK^T: 10 causal pairs x 2 = 20 MACs, PV the same; softmax 5 FLOPs x 10 scores
    c = costs.dense_attention(T=4, hs=2)
    assert c == Cost(macs=40, ops=50) and c.flops == 130
    assert costs.dense_attention(T=4, hs=2, softmax_ops=0) == Cost(40, 0)


def test_mlp_selector():
    # Linear(2 -> 3) on 4 queries: 4*2*3 = 24; Linear(3 -> T=4): 4*3*4 = 48; top-k over 4 candidates x 4 queries
    assert costs.mlp_selector(T=4, hs=2, hidden=3) == Cost(macs=72, ops=16)


def test_indexer_selector():
    # q and k projections from x (4, 8) to 2: 2 * 4*8*2 = 128; causal scores 10 x 2 = 20; top-k over 10 pairs
    assert costs.indexer_selector(T=4, d_model=8, d_index=2) == Cost(macs=148, ops=10)


def test_oracle_selector():
    # causal QK^T only: 10 pairs x 2; top-k over 10 pairs
    assert costs.oracle_selector(T=4, hs=2) == Cost(macs=20, ops=10)


def test_indexed_block_selector_by_hand():
    # T=4, d=3, d_index=2, B=2: 2 query blocks; pooling 4·3 = 12, projections of 2 first queries and 2 block means
    # 2·2·3·2 = 24, (query block, key block) pairs 1 + 2 = 3 -> 3·2
    assert costs.indexed_block_selector(T=4, d_model=3, d_index=2, block=2) == Cost(macs=42, ops=3)
    assert costs.SELECTORS["block"](4, 3, 64, ComponentSizes(d_index=2, block=2)) == Cost(macs=42, ops=3)


def test_block_sparse_pairs_by_enumeration():
    """Each query block reads its own block causally and up to n - 1 earlier blocks: count key by key."""
    for T, B, n in ((8, 2, 1), (8, 2, 2), (10, 4, 2), (64, 16, 3), (50, 16, 10), (7, 3, 2)):
        expected = sum(t % B + 1 + min(n - 1, t // B) * B for t in range(T))  # own block's keys up to t + earlier
        assert costs.block_sparse_pairs(T, B, n) == expected
    assert costs.block_sparse_pairs(16, 4, 4) == costs.causal_pairs(16)  # every block kept: dense causal
    # T=8, B=2, n=2: block 0 has 1 + 2 pairs, blocks 1-3 (1 + 2) + 2·2 each: 3 + 3·7 = 24 pairs
    assert costs.block_softmax_attention(8, 2, 2, 2) == Cost(macs=2 * 2 * 24, ops=5 * 24)


def test_every_pair_of_the_framework_is_counted():
    from src.approximators import APPROXIMATORS
    from src.selectors import SELECTORS

    assert set(PAIRS) == {f"{s}+{a}" for s in SELECTORS for a in APPROXIMATORS}


def test_block_selector():
    # mean-pool 4 keys of width 2: 8; scores over 6 causal (query, block) pairs x 2 = 12; top-k over 6
    assert costs.block_selector(T=4, hs=2, block=2) == Cost(macs=20, ops=6)


def test_mlp_approximator():
    # Linear(k*hs = 4 -> 3) on 4 queries: 48; Linear(3 -> 2): 24; no element-wise work counted
    assert costs.mlp_approximator(T=4, hs=2, k=2, hidden=3) == Cost(macs=72, ops=0)


def test_softmax_approximator():
    # scores 4*2*2 = 16, weighted sum 16; softmax 5 x (4 queries x 2 keys)
    assert costs.softmax_approximator(T=4, hs=2, k=2) == Cost(macs=32, ops=40)


def test_rest_of_layer():
    # d=8, T=4: q,k,v,out projections 4 x (4*8*8) = 1024; MLP 4*8*32 + 4*32*8 = 2048
    assert costs.rest_of_layer(d_model=8, T=4) == Cost(macs=3072)


# ---- layers and models ------------------------------------------------------------------------------------------


def test_layers_sum_every_head():
    # d=4, 2 heads of 2, T=4, k=2: per head oracle (20, 10) + softmax (32, 40) = (52, 50)
    assert costs.sparse_layer("oracle+softmax", d_model=4, n_head=2, T=4, k=2) == Cost(macs=104, ops=100)
    assert costs.dense_layer(d_model=4, n_head=2, T=4) == Cost(macs=80, ops=100)


def test_keys():
    assert costs.keys_kept(64) == 8 and costs.keys_kept(4) == 1  # T/8, at least one
    assert costs.keys_kept(64, k=8) == 8 and costs.keys_kept(16, k=32) == 16  # fixed k, at most T
    assert costs.keys_attended("block", 256, sizes=ComponentSizes(block=64)) == 64  # T/8 = 32 -> one whole block
    assert costs.keys_attended("block", 32, sizes=ComponentSizes(block=64)) == 32  # never more than T
    assert costs.blocks_kept(4096, 512, ComponentSizes(block=64)) == 8 and costs.blocks_kept(100, 8) == 1
    assert costs.keys_attended("indexer", 256) == 32


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


# ---- the prototype's README, reproduced ------------------------------------------------------------------------


def test_prototype_formulas_by_hand():
    assert costs.prototype_dense_macs(256, 512) == 2 * 256 * 256 * 512
    # selector 256*64*128 + 256*128*256, approximator 256*(8*64)*128 + 256*128*64
    assert costs.prototype_sparse_macs(256) == 2_097_152 + 8_388_608 + 16_777_216 + 2_097_152


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
        [(s.d_model, s.seq_len) for s in GRID] + [(512, 512)])


@pytest.mark.parametrize(
    "line",  # B·nh·T²·4 against B·nh·T·k·4 bytes, B = 8, nh = d/64, k = min(32, T/8), worked out by hand
    ["| 128d / 64 | 2 | 8 | 0.3 | 0.033 | 8× |", "| 256d / 128 | 4 | 16 | 2.1 | 0.3 | 8× |",
     "| 512d / 256 | 8 | 32 | 16.8 | 2.1 | 8× |", "| 512d / 512 ² | 8 | 32 | 67.1 | 4.2 | 16× |",
     "| 768d / 512 | 12 | 32 | 100.7 | 6.3 | 16× |", "| 1024d / 1024 | 16 | 32 | 536.9 | 16.8 | 32× |",
     "| 1280d / 2048 | 20 | 32 | 2,684.4 | 41.9 | 64× |"],
)
def test_prototype_memory_rows(line):
    assert line in prototype_markdown()


def test_prototype_labels_say_what_is_counted():
    md = prototype_markdown()
    assert "ONE head's selector + approximator, nothing for the other heads" in md
    assert "MACs" in md and '"2048d"' in md and "attention-probability matrices only" in md


def test_full_accounting_never_below_prototype():
    proto = {(r.d_model, r.seq_len): r for r in costs.prototype_compute_rows()}
    as_prototype = ComponentSizes(selector_hidden=costs.PROTO_HIDDEN, approximator_hidden=costs.PROTO_HIDDEN)
    for sizes, k in ((as_prototype, costs.PROTO_K), (ComponentSizes(), None)):
        for r in costs.full_rows(k=k, sizes=sizes, pairs=["mlp+mlp"]):
            p = proto[r.size.d_model, r.size.seq_len]
            assert r.dense_attn.flops >= p.dense_macs
            assert r.sparse_attn.flops >= p.sparse_macs
    # at the prototype's own sizes, every head counted: exactly n_head x 2 x its one head, plus the top-k
    for r in costs.full_rows(k=costs.PROTO_K, sizes=as_prototype, pairs=["mlp+mlp"]):
        T = r.size.seq_len
        assert r.sparse_attn.flops == r.size.n_head * (2 * costs.prototype_sparse_macs(T) + T * T)


def test_grid_matches_model_configs():
    for s in GRID:
        cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{s.name}.yaml").read_text())
        assert (cfg["d_model"], cfg["n_head"], cfg["seq_len"]) == (s.d_model, s.n_head, s.seq_len)
        assert s.head_dim == costs.PROTO_HEAD_DIM


# ---- the command line -------------------------------------------------------------------------------------------


def test_cli_costs_writes_files(tmp_path, capsys):
    out = tmp_path / "costs"
    assert main(["costs", "--out", str(out)]) == 0
    names = {"costs_prototype.md", "costs_full.md", "costs_prototype.csv", "costs_full.csv",
             "memory_prototype.csv", "compute_scaling.png"}
    assert names <= {p.name for p in out.iterdir()}
    assert (out / "compute_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| 512d / 256 | 67.1 | 29.4 | 2.29× |" in printed and "Full accounting" in printed
    assert (out / "costs_full.csv").read_text().count("\n") == 1 + len(GRID) * len(LEARNED_PAIRS)


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
