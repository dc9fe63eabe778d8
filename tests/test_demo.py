"""The one-minute tour runs end to end (shrunk with --tiny) and prints its three parts."""

from tests.conftest import run_cli


def test_demo_tiny(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("src.demo", "--tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout
    assert "(a) Prototype accounting" in text and "(b) Full accounting" in text and "15.24×" in text  # 1. costs
    assert "speed-up vs SDPA" in text and "indexer+softmax" in text  # 2. timings
    assert "Final Results:" in text and "KeySelector top-1 accuracy" in text  # 3. pipeline
    assert "total" in text and str(out) in text
    assert (out / "metrics.json").is_file()
