"""Timing (src/bench/timing.py): fast calls in blocks, slow ones one by one, phases that nest, peak memory."""

from __future__ import annotations

import time

import torch

from src.bench import layer as bench
from src.bench.timing import BLOCKED_BELOW, Phases, time_runs

CPU = torch.device("cpu")


def test_fast_calls_are_timed_in_blocks_slow_ones_one_by_one():
    fast = time_runs(lambda: None, (), CPU, repeats=3)
    assert len(fast) >= 1 and all(0 <= t < BLOCKED_BELOW for t in fast)
    slow = time_runs(lambda: time.sleep(BLOCKED_BELOW * 1.5), (), CPU, repeats=3)
    assert len(slow) == 3 and all(t >= BLOCKED_BELOW * 1.4 for t in slow)


def test_max_seconds_stops_the_repeats_after_one():
    times = time_runs(lambda: time.sleep(0.06), (), CPU, repeats=50, warmup=0, max_seconds=0.05)
    assert len(times) == 1


def test_phases_add_up_and_nest():  # (the kernels' own phases: tests/test_sparse.py)
    phases = Phases(CPU)
    with phases("kernel"):
        time.sleep(0.02)
        with phases("selection"):  # inside: subtracted from the kernel's time
            time.sleep(0.03)
    assert 0.03 <= phases.seconds["selection"] < 0.2
    assert 0.02 <= phases.seconds["kernel"] < 0.045  # without the selection's 0.03


def test_peak_memory_counts_what_the_call_allocates():
    peak = bench.peak_bytes(lambda: torch.ones(1_000_000).mul(2).sum(), (), torch.device("cpu"))
    assert 8e6 <= peak < 9e6  # the ones and their product live at once (4 MB each); the sum is 4 bytes
