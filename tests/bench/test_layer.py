"""``python -m src.bench`` (src/bench/layer.py): every variant is library code and equals SDPA with every key kept; FLOP
limits, crossovers, skipped cells, files, bad arguments."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
import torch

from src.bench import layer as bench
from src.errors import UserError
from src.sparse import Budget, SparseAttention, sdpa_attention
from tests.conftest import run_cli

D, H, B = 64, 2, 1  # the tiny shape of every test (the flex tests share their compiled kernels)


SPARSE = [v for v in bench.VARIANTS if v not in bench.DENSE]


def inputs(T: int, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(B, T, D)
    q, k, v = (torch.randn(B, H, T, D // H) for _ in range(3))
    return x, q, k, v


def layer(variant: str, T: int, budget, block_size: int = 16, seed: int = 1):
    torch.manual_seed(seed)
    fn = bench.build(variant, D, H, T, Budget.parse(budget), block_size)
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():  # random, large weights: any bias towards late keys would show
            torch.nn.init.normal_(p, std=2.0)
    return fn


@pytest.mark.parametrize("variant", [v for v in SPARSE if bench.pair_of(v)[1] == "softmax"] + ["naive"])
@pytest.mark.parametrize("T,block_size", [(64, 16), (37, 8)])
def test_full_budget_equals_sdpa(variant, T, block_size):
    x, q, k, v = inputs(T)
    fn = layer(variant, T, 1.0, block_size)
    with torch.no_grad():
        torch.testing.assert_close(fn(x, q, k, v), sdpa_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # compiles the flex kernel
def test_block_variants_are_the_same_choice():
    """block+softmax (gather), block+flex and block+tiles: one selector, one choice, one output."""
    x, q, k, v = inputs(64)
    with torch.no_grad():
        ys = {v_: layer(v_, 64, 32)(x, q, k, v) for v_ in ("block+softmax", "block+flex", "block+tiles")}
    assert not torch.allclose(ys["block+softmax"], sdpa_attention(q, k, v), atol=1e-3)
    for name in ("block+flex", "block+tiles"):
        torch.testing.assert_close(ys[name], ys["block+softmax"], atol=1e-5, rtol=1e-5)


def test_query_block_variants_are_the_same_choice():
    """query_block+softmax (gather) and query_block+query_tiles: one per-query selector, one choice, one output."""
    x, q, k, v = inputs(64)
    with torch.no_grad():
        ys = {v_: layer(v_, 64, 32)(x, q, k, v) for v_ in ("query_block+softmax", "query_block+query_tiles")}
    assert not torch.allclose(ys["query_block+softmax"], sdpa_attention(q, k, v), atol=1e-3)
    torch.testing.assert_close(ys["query_block+query_tiles"], ys["query_block+softmax"], atol=1e-5, rtol=1e-5)


def test_variants_are_library_code():
    """Every sparse variant is SparseAttention with the library's selector and approximator; src/bench/layer.py itself
    defines no attention: it calls no softmax, matmul, top-k, gather or attention kernel."""
    for variant in SPARSE:
        fn = layer(variant, 64, 16)
        assert isinstance(fn, SparseAttention)
        assert type(fn.selector).__module__.startswith("src.selectors.")
        assert type(fn.approximator).__module__.startswith("src.approximators.")
        assert fn.kernel == bench.pair_of(variant)[2]
    tree = ast.parse(Path(bench.__file__).read_text())
    called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
              for node in ast.walk(tree) if isinstance(node, ast.Call)}
    forbidden = {"softmax", "matmul", "bmm", "einsum", "topk", "gather", "index_select", "scaled_dot_product_attention",
                 "flex_attention", "create_block_mask", "from_kv_blocks", "masked_fill"}
    assert not called & forbidden, f"src/bench/layer.py computes attention itself: {called & forbidden}"


@pytest.mark.parametrize("variant", bench.VARIANTS)
def test_no_output_depends_on_later_inputs(variant):
    T = 64
    fn = layer(variant, T, 24)  # block variants: 2 of 4 blocks
    x, q, k, v = inputs(T)
    with torch.no_grad():
        y = fn(x, q, k, v)
        for t in (0, 17, 40):
            x2, q2, k2, v2 = (a.clone() for a in (x, q, k, v))
            x2[:, t + 1:] += 3 * torch.randn_like(x2[:, t + 1:])
            for a in (q2, k2, v2):
                a[:, :, t + 1:] += 3 * torch.randn_like(a[:, :, t + 1:])
            torch.testing.assert_close(fn(x2, q2, k2, v2)[:, :, : t + 1], y[:, :, : t + 1], atol=1e-5, rtol=1e-5)


def test_flop_limits():
    """The FLOP limit is dense causal over sparse FLOPs (src/costs/accounting.py): 1 for the dense variants, about
    T / (2 · budget) for the block kernels at long T, the same for the three block variants."""
    assert bench.flop_limit("sdpa", 4096, 512, 8, Budget(512), 64) == 1.0
    limits = {v: bench.flop_limit(v, 16384, 512, 8, Budget(512), 64) for v in ("block+softmax", "block+flex",
                                                                               "block+tiles")}
    assert len(set(limits.values())) == 1 and 14 < limits["block+flex"] < 18.5
    assert 3.5 < bench.flop_limit("block+tiles", 4096, 512, 8, Budget(512), 64) < 4.6
    assert bench.flop_limit("mlp+mlp", 4096, 512, 8, Budget(512), 64) < 1  # the prototype's design costs more
    per_query = {v: bench.flop_limit(v, 16384, 512, 8, Budget(512), 64) for v in ("query_block+softmax",
                                                                                  "query_block+query_tiles",
                                                                                  "query_block+query_flex")}
    assert len(set(per_query.values())) == 1  # the same pairs read; its selector scores every query, so a lower limit
    assert 12 < per_query["query_block+query_tiles"] < limits["block+tiles"]
    assert bench.keys_read("query_block+query_tiles", 4096, Budget(500), 64) == 512  # whole blocks


def test_backward_flop_limit_lies_between_the_forward_limit_and_three_times_it():
    """The selection runs once per training step, the attention forward and backward: the limit of forward +
    backward is above the forward's (the selection weighs less) and below three times it."""
    for variant in ("block+tiles", "query_block+query_tiles"):
        forward = bench.flop_limit(variant, 8192, 512, 8, Budget(512), 64)
        both = bench.flop_limit(variant, 8192, 512, 8, Budget(512), 64, backward=True)
        assert forward < both < 3 * forward
    assert bench.flop_limit("sdpa", 8192, 512, 8, Budget(512), 64, backward=True) == 1.0


@pytest.mark.parametrize("variant", ["block+tiles", "query_block+query_tiles", "indexer+softmax"])
def test_backward_gives_the_gradients_of_sdpa_when_every_key_is_kept(variant):
    """What ``--backward`` times is the forward and the gradients of q, k, v: with every key kept, SDPA's."""
    x, q, k, v = inputs(64)
    fn = layer(variant, 64, 1.0, 16).requires_grad_(False)
    sparse = bench.with_backward(fn)(x, *(t.clone().requires_grad_() for t in (q, k, v)))
    dense = bench.with_backward(lambda x, q, k, v: sdpa_attention(q, k, v))(
        x, *(t.clone().requires_grad_() for t in (q, k, v)))
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_backward_rows():
    row = bench.measure("block+tiles", 128, D, H, 32, 16, repeats=2, memory=False, backward=True)
    assert row["status"] == "ok" and row["passes"] == "forward + backward" and row["selection_ms"] is None
    assert row["flop_limit"] > bench.measure("block+tiles", 128, D, H, 32, 16, repeats=1, memory=False)["flop_limit"]
    flex = bench.measure("block+flex", 128, D, H, 32, 16, repeats=1, device="cpu", backward=True)
    assert flex["status"] == "skipped" and "no backward on the CPU" in flex["note"]
    assert bench.settings_from_args(bench.build_parser().parse_args(["--backward"])).backward


@pytest.mark.slow  # compiles the flex kernel
def test_harness_end_to_end(tmp_path, capsys, monkeypatch):
    from src.sparse import flex

    monkeypatch.setattr(flex, "COMPILED_SHAPES", set())  # as in a fresh process
    out = tmp_path / "bench"
    argv = ["--seq-lens", "64,128", "--sizes", f"{D}/{H}", "--budgets", "32,0.25", "--block-size", "16",
            "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"bench.csv", "bench.json", "bench.md", "bench.png"}
    rows = list(csv.DictReader((out / "bench.csv").open()))
    sparse = [v for v in bench.DEFAULT_VARIANTS if v not in bench.DENSE]
    expected = [(T, v, b) for T in (64, 128) for v, b in [("sdpa", "–"), ("naive", "–")]
                + [(v, b) for b in ("32 keys", "T/4") for v in sparse]]
    assert [(int(r["T"]), r["variant"], r["budget"]) for r in rows] == expected
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 and float(r["peak_mb"]) > 0 for r in rows)
    assert [int(r["keys_read"]) for r in rows if r["variant"] == "indexer+softmax"] == [32, 16, 32, 32]
    assert [int(r["keys_read"]) for r in rows if r["variant"] == "block+tiles"] == [32, 16, 32, 32]  # whole blocks
    for r in rows:
        if r["variant"] not in bench.DENSE:
            assert float(r["flop_limit"]) > 0 and float(r["of_limit"]) == pytest.approx(
                float(r["speedup"]) / float(r["flop_limit"]), rel=1e-2, abs=1e-4)  # both rounded to 4 places
            assert float(r["kernel_ms"]) > 0 and float(r["selection_ms"]) > 0
    assert all(float(r["mask_ms"]) > 0 for r in rows if r["variant"] == "block+flex")
    saved = json.loads((out / "bench.json").read_text())
    assert {"device_name", "torch", "threads"} <= saved["machine"].keys() and saved["settings"]["repeats"] == 1
    assert len(saved["rows"]) == len(expected) and "block+tiles @ 32 keys" in saved["crossover"][f"{D}d/{H}h"]
    flex = [r for r in saved["rows"] if r["variant"] == "block+flex"]
    assert [r["compile_s"] is not None for r in flex] == [True, False, True, False]  # once per shape, never timed
    md = (out / "bench.md").read_text()
    assert "| 128 | block+flex | T/4 |" in md and "Measured crossover T" in md and "measured, CPU" in md
    assert "- block+tiles, budget 32 keys:" in md and "FLOP limit" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"[{len(expected)}/{len(expected)}] {D}d/{H}h T=128" in printed and "speed-up vs SDPA" in printed


def test_budget_larger_than_t_is_skipped():
    row = bench.measure("block+tiles", T=64, d_model=D, n_head=H, budget=512, block_size=16, repeats=1)
    assert row["status"] == "skipped" and row["note"] == "budget 512 keys > T"


def rows_of(points: dict[int, float | None], variant: str = "v", d_model: int = 512) -> list[dict]:
    return [dict(variant=variant, T=T, d_model=d_model, n_head=8, status="ok" if up else "skipped", speedup=up)
            for T, up in points.items()]


def test_crossover():
    assert bench.crossover(rows_of({256: 0.5, 512: 1.2, 1024: 0.9, 2048: 1.5, 4096: 2.0}), "v") == 2048
    assert bench.crossover(rows_of({256: 1.1, 512: 1.2}), "v") == 256
    assert bench.crossover(rows_of({256: 0.5, 512: 1.0}), "v") is None  # as fast is not faster
    assert bench.crossover(rows_of({256: 0.5, 512: 2.0, 1024: None}), "v") == 512  # a skipped cell: not measured
    assert bench.crossover_text(rows_of({256: 0.5, 512: 0.9}), "v") == "none up to T=512"
    assert bench.crossover_text(rows_of({256: 0.5}), "w") == "not measured"
    two = rows_of({256: 2.0, 512: 2.0}) + rows_of({256: 0.5, 512: 1.5}, d_model=1024)
    assert bench.crossover(two, "v", 512, 8) == 256 and bench.crossover(two, "v", 1024, 8) == 512


def test_skipped_cells_are_recorded():
    row = bench.measure("naive", T=256, d_model=D, n_head=H, max_gb=1e-4)
    assert row["status"] == "skipped" and "--max-gb" in row["note"] and row["median_ms"] is None
    s = bench.Settings(seq_lens=(32, 64, 128), sizes=((D, H),), variants=("indexer+softmax",), budgets=(0.25,),
                       repeats=2, warmup=0, max_seconds=1e-9)
    rows = bench.run(s, log=lambda line: None)
    sdpa = [r for r in rows if r["variant"] == "sdpa"]
    assert [r["status"] for r in sdpa] == ["ok", "skipped", "skipped"]  # one run is predicted to take over 1 ns
    assert sdpa[0]["repeats"] == 1 and "1 of 2 runs" in sdpa[0]["note"]
    assert "--max-seconds" in sdpa[1]["note"] and sdpa[1]["speedup"] is None
    assert "skipped: one run predicted to take" in bench.table(rows) and "at T=32" in bench.table(rows)
    rows = bench.run(bench.Settings(seq_lens=(32, 64), sizes=((D, H),), variants=("sdpa",), repeats=1,
                                    max_total_seconds=1e-9), log=lambda line: None)
    assert all(r["status"] == "skipped" and "--max-total-seconds 1e-09 spent" in r["note"] for r in rows)


@pytest.mark.parametrize("argv,msg", [
    (["--budgets", "0"], "budget=0 must be a positive number of keys per query"),
    (["--budgets", "1.5"], "a fraction of the sequence length must be in (0, 1]"),
    (["--budgets", "lots"], "expected keys per query (512) or fractions of T (0.125), got 'lots'"),
    (["--variants", "sdpa,nope"], "variant 'nope' is unknown"),
    (["--sizes", "64/3"], "not divisible"),
    (["--sizes", "64x2"], "D_MODEL/N_HEAD"),
    (["--seq-lens", "0"], "positive"),
    (["--device", "tpu"], "--device=tpu is unknown"),
    (["--dtype", "fp8"], "dtype 'fp8' is unknown"),
    (["--sizes", "64/2", "--d-model", "64"], "either --sizes or --d-model"),
])
def test_bad_arguments(argv, msg, capsys, tmp_path):
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_bad_measure_arguments():
    with pytest.raises(UserError, match="budget=0 must be"):
        bench.measure("indexer+softmax", T=64, d_model=D, n_head=H, budget=0)
    with pytest.raises(UserError, match="unknown"):
        bench.measure("mlp+nope", T=64, d_model=D, n_head=H)


@pytest.mark.slow  # a process
def test_cli_exit_status():
    done = run_cli("src.bench", "--variants", "nope", timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: variant 'nope' is unknown")


def each_help(parser) -> dict[str, str]:
    """Option -> its --help text as printed (argparse keeps no public list of a parser's options)."""
    formatter = parser._get_formatter()
    return {a.option_strings[-1]: formatter._expand_help(a) if a.help else "" for a in parser._actions
            if a.option_strings}


def test_help_names_the_decode_benchmark_and_each_default_once():
    parser = bench.build_parser()
    assert "python -m src.bench --decode --help" in " ".join(parser.format_help().split())
    helps = each_help(parser)
    assert "--decode" in helps and all(text for text in helps.values())
    assert all(text.count("default") <= 1 for text in helps.values()), helps  # said once, never twice
    assert helps["--budgets"].endswith("(default 512,0.125)") and helps["--seed"].endswith("(default: 0)")
    assert helps["--sizes"].endswith("(default 512/8: heads of 64)")
