"""``python -m src.bench --teacher`` (src/bench/teacher.py): reading nanoGPT's output, bad arguments. The runs
themselves (two training processes of minutes each) are the benchmark's, not the tests'."""

from __future__ import annotations

import pytest

from src.bench.__main__ import main as bench_main
from src.bench.teacher import read_nanogpt_log

LOG = """step 0: train loss 4.3741, val loss 4.3682
iter 0: loss 4.3623, time 3091.16ms, mfu -100.00%
iter 1: loss 4.3001, time 61.50ms, mfu -100.00%
iter 249: loss 2.5000, time 63.50ms, mfu 0.02%
step 250: train loss 2.4695, val loss 2.4900
saving checkpoint to out-shakespeare-char
iter 250: loss 2.4900, time 1200.00ms, mfu 0.02%
iter 251: loss 2.4800, time 62.00ms, mfu 0.02%
"""


def test_nanogpt_log_without_its_evaluation_steps():
    times, curve = read_nanogpt_log(LOG)
    assert times == pytest.approx([0.0615, 0.0635, 0.062])  # steps 0 and 250 hold an evaluation
    assert curve == [(0, 4.3682), (250, 2.49)]


@pytest.mark.parametrize("args,message", [
    (["--nanogpt", "/nonexistent"], "--nanogpt /nonexistent: no train.py there"),
    (["--precisions", "fp8"], "--precisions: 'fp8' is unknown"),
    (["--steps", "0"], "expected a positive integer"),
    (["--paired"], "--paired times nanoGPT's step beside the project's: give --nanogpt PATH too"),
])
def test_bad_arguments_are_one_line(args, message, capsys):
    assert bench_main(["--teacher", *args]) == 2
    assert message in capsys.readouterr().err


def test_few_steps_are_refused_with_nanogpt(tmp_path, capsys):
    for path in ("train.py", "model.py", "data/shakespeare_char/prepare.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    assert bench_main(["--nanogpt", str(tmp_path), "--steps", "100", "--out", str(tmp_path / "out")]) == 2
    assert "--steps 100: give 250 or more with --nanogpt" in capsys.readouterr().err
