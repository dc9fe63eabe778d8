"""The measured benchmark: every variant computes causal attention (K = T: exactly SDPA), chunking changes nothing,
the harness writes its files, crossover, skipped cells, bad arguments. No timing is asserted."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from src import bench
from src.errors import UserError
from src.selectors import gather_keys
from src.selectors.block import block_keys
from tests.conftest import run_cli

D, H, B = 64, 2, 1  # the tiny shape of every test (the flex tests share their compiled kernels)
SPARSE = [v for v in bench.VARIANTS if "+" in v]


def inputs(T: int, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(B, T, D)
    q, k, v = (torch.randn(B, H, T, D // H) for _ in range(3))
    return x, q, k, v


def layer(variant: str, T: int, top_k: int, chunk: int = bench.CHUNK, block_size: int = 16, seed: int = 1):
    torch.manual_seed(seed)
    fn = bench.build(variant, D, H, T, top_k, block_size, chunk)
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():  # random, large weights: any bias towards late keys would show
            torch.nn.init.normal_(p, std=2.0)
    return fn


@pytest.mark.parametrize("selector", ["mlp", "indexer", "oracle", "block"])
@pytest.mark.parametrize("T,chunk,block_size", [(64, 512, 16), (40, 16, 16), (37, 5, 8)])
def test_full_k_softmax_equals_sdpa(selector, T, chunk, block_size):
    x, q, k, v = inputs(T)
    fn = layer(f"{selector}+softmax", T, T, chunk, block_size)
    with torch.no_grad():
        torch.testing.assert_close(fn(x, q, k, v), bench.sdpa(x, q, k, v), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bench.naive(x, q, k, v), bench.sdpa(x, q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("T", [64, 128])
def test_flex_all_blocks_equals_sdpa_and_partial_matches_its_mask(T):
    """block+flex, compiled: with every block kept it is SDPA; with k < T it is SDPA under the chosen blocks'
    mask, and the eager flex_attention agrees (the BlockMask's sparsity is also in mask_mod)."""
    x, q, k, v = inputs(T)
    with torch.no_grad():
        torch.testing.assert_close(layer("block+flex", T, T)(x, q, k, v), bench.sdpa(x, q, k, v),
                                   atol=1e-5, rtol=1e-5)
        fn = layer("block+flex", T, T // 4)
        y = fn(x, q, k, v)
        choice = fn.selector.select_blocks(x, fn.n_blocks, per_block=True)
        keep = torch.zeros(B, H, T // 16, T // 16, dtype=torch.bool)
        keep.scatter_(-1, choice.idx, True)  # every slot valid here: T // 4 keys = 1+ blocks for each row
        assert keep.sum(-1).max() <= fn.n_blocks < T // 16
        mask = keep.repeat_interleave(16, -1).repeat_interleave(16, -2) & torch.ones(T, T, dtype=torch.bool).tril()
        torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
        fn.compiled = False
        torch.testing.assert_close(fn(x, q, k, v), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selector", ["mlp", "indexer", "oracle"])
def test_chunked_selection_is_the_modules_selection(selector):
    T, top_k = 50, 7
    x, q, k, v = inputs(T)
    fn = layer(f"{selector}+softmax", T, top_k)
    with torch.no_grad():
        whole = fn.selector.select(x, q, k, top_k)  # the module's own, unchunked
        for chunk in (1, 8, 50):
            ctx = fn.prepare(x, q, k)
            parts = [fn.select_rows(ctx, s, min(s + chunk, T)) for s in range(0, T, chunk)]
            assert torch.equal(torch.cat([p.idx for p in parts], 2), whole.idx)
            assert torch.equal(torch.cat([p.valid for p in parts], 2), whole.valid)


def test_chunked_block_selection_is_the_selectors():
    T, top_k = 50, 20
    x, q, k, v = inputs(T)
    fn = layer("block+softmax", T, top_k, block_size=8)
    with torch.no_grad():
        whole = block_keys(fn.selector.select_blocks(x, fn.n_blocks), 8)
        for chunk in (1, 7, 50):
            ctx = fn.prepare(x, q, k)
            parts = [fn.select_rows(ctx, s, min(s + chunk, T)) for s in range(0, T, chunk)]
            assert torch.equal(torch.cat([p.idx for p in parts], 2), whole.idx)
            assert torch.equal(torch.cat([p.valid for p in parts], 2), whole.valid)
    assert fn.n_blocks == 3 and bench.keys_read("block+softmax", T, top_k, 8) == 24


def test_gather_rows_is_gather_keys():
    t = torch.randn(2, 3, 11, 5)
    idx = torch.randint(0, 11, (2, 3, 4, 6))
    assert torch.equal(bench.gather_rows(t, idx), gather_keys(t, idx))


@pytest.mark.parametrize("variant", bench.VARIANTS)
def test_no_output_depends_on_later_inputs(variant):
    T = 64
    fn = layer(variant, T, 24, chunk=24)  # block variants: 2 of 4 blocks
    x, q, k, v = inputs(T)
    with torch.no_grad():
        y = fn(x, q, k, v)
        for t in (0, 17, 40):
            x2, q2, k2, v2 = (a.clone() for a in (x, q, k, v))
            x2[:, t + 1:] += 3 * torch.randn_like(x2[:, t + 1:])
            for a in (q2, k2, v2):
                a[:, :, t + 1:] += 3 * torch.randn_like(a[:, :, t + 1:])
            torch.testing.assert_close(fn(x2, q2, k2, v2)[:, :, : t + 1], y[:, :, : t + 1], atol=1e-5, rtol=1e-5)


def test_peak_memory_counts_what_the_call_allocates():
    peak = bench.peak_bytes(lambda: torch.ones(1_000_000).mul(2).sum(), (), torch.device("cpu"))
    assert 8e6 <= peak < 9e6  # the ones and their product live at once (4 MB each); the sum is 4 bytes


def test_harness_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--seq-lens", "64,128", "--sizes", f"{D}/{H}", "--repeats", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"bench.csv", "bench.json", "bench.md", "bench.png"}
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(int(r["T"]), r["variant"]) for r in rows] == [(T, v) for T in (64, 128) for v in bench.DEFAULT_VARIANTS]
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 and float(r["peak_mb"]) > 0 for r in rows)
    assert [int(r["top_k"]) for r in rows if r["variant"] == "mlp+mlp"] == [8, 16]  # T/8
    saved = json.loads((out / "bench.json").read_text())
    assert {"device_name", "torch", "threads"} <= saved["machine"].keys() and saved["settings"]["repeats"] == 1
    assert len(saved["rows"]) == 12 and set(saved["crossover"]["64d/2h"]) == set(bench.DEFAULT_VARIANTS[1:])
    flex = [r for r in saved["rows"] if r["variant"] == "block+flex"]
    assert all(r["compile_s"] is not None for r in flex)  # compiled once per shape, never timed
    md = (out / "bench.md").read_text()
    assert "| 128 | block+flex |" in md and "Measured crossover T" in md and "measured, CPU" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "[12/12] 64d/2h T=128" in printed and "speed-up vs SDPA" in printed


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
    s = bench.Settings(seq_lens=(32, 64, 128), sizes=((D, H),), variants=("indexer+softmax",), repeats=2,
                       warmup=0, max_seconds=1e-9)
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
    (["--seq-lens", "64", "--top-k", "65"], "top_k=65 must be in 1..T=64"),
    (["--variants", "sdpa,nope"], "variant 'nope' is unknown"),
    (["--sizes", "64/3"], "not divisible"),
    (["--sizes", "64x2"], "D_MODEL/N_HEAD"),
    (["--seq-lens", "0"], "positive"),
    (["--device", "tpu"], "device 'tpu' is unknown"),
    (["--dtype", "fp8"], "dtype 'fp8' is unknown"),
    (["--top-k", "4", "--top-k-frac", "0.5"], "not allowed with"),
    (["--sizes", "64/2", "--d-model", "64"], "either --sizes or --d-model"),
])
def test_bad_arguments(argv, msg, capsys, tmp_path):
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_bad_measure_arguments():
    with pytest.raises(UserError, match="top_k=0"):
        bench.measure("sdpa", T=64, d_model=D, n_head=H, top_k=0)
    with pytest.raises(UserError, match="unknown"):
        bench.measure("mlp+nope", T=64, d_model=D, n_head=H)


def test_cli_exit_status():
    done = run_cli("src.bench", "--variants", "nope", timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: variant 'nope' is unknown")
