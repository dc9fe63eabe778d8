"""Timing (src/bench/timing.py): fast calls in blocks, slow ones one by one, phases that nest, peak memory."""

from __future__ import annotations

import time

import pytest
import torch

from src.bench import layer as bench
from src.bench import timing
from src.bench.timing import BLOCKED_BELOW, Phases, time_runs

CPU = torch.device("cpu")


@pytest.mark.parametrize("first,blocked", [(BLOCKED_BELOW / 10, True), (BLOCKED_BELOW * 2, False)])
def test_fast_calls_are_timed_in_blocks_slow_ones_one_by_one(monkeypatch, first, blocked):
    """The warm-up call's time picks the method (what it took is faked: no wall-clock bound a busy machine breaks):
    torch.utils.benchmark's blocked autorange below BLOCKED_BELOW, else ``repeats`` single calls."""
    from torch.utils import benchmark

    used = []
    monkeypatch.setattr(timing, "timed", lambda fn, args, device: first)
    for name in ("blocked_autorange", "timeit"):
        real = getattr(benchmark.Timer, name)
        monkeypatch.setattr(benchmark.Timer, name, lambda self, *a, _real=real, _name=name, **k: (
            used.append(_name), _real(self, *a, **k))[1])
    times = time_runs(lambda: None, (), CPU, repeats=3)
    assert used == (["blocked_autorange"] if blocked else ["timeit"] * 3)
    assert len(times) >= 1 and all(t >= 0 for t in times) and (blocked or len(times) == 3)


def test_a_slow_call_is_measured_call_by_call():
    slow = time_runs(lambda: time.sleep(BLOCKED_BELOW * 1.5), (), CPU, repeats=3)
    assert len(slow) == 3 and all(t >= BLOCKED_BELOW * 1.4 for t in slow)  # a sleep lasts at least as long


def test_max_seconds_stops_the_repeats_after_one():
    times = time_runs(lambda: time.sleep(0.06), (), CPU, repeats=50, warmup=0, max_seconds=0.05)
    assert len(times) == 1


class Clock:
    """A stand-in for the ``time`` module: perf_counter reads a clock that only ``sleep`` moves."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_phases_nest_exactly(monkeypatch):  # (the kernels' own phases: tests/sparse/)
    clock = Clock()
    monkeypatch.setattr(timing, "time", clock)
    phases = Phases(CPU)
    with phases("kernel"):
        clock.sleep(0.02)
        with phases("selection"):  # inside: subtracted from the kernel's time
            clock.sleep(0.03)
        clock.sleep(0.01)
    with phases("kernel"):  # a phase entered again adds up
        clock.sleep(0.5)
    assert phases.seconds == {"kernel": pytest.approx(0.53), "selection": pytest.approx(0.03)}


def test_phases_add_up_to_the_time_around_them():
    phases = Phases(CPU)
    start = time.perf_counter()
    with phases("kernel"):
        time.sleep(0.02)
        with phases("selection"):
            time.sleep(0.03)
    total = time.perf_counter() - start
    kernel, selection = phases.seconds["kernel"], phases.seconds["selection"]
    assert kernel >= 0.02 and selection >= 0.03  # each at least the sleep it holds
    assert kernel + selection <= total + 1e-9  # measured inside the interval around both: the inner counted once


def test_peak_memory_counts_what_the_call_allocates():
    peak = bench.peak_bytes(lambda: torch.ones(1_000_000).mul(2).sum(), (), torch.device("cpu"))
    assert 8e6 <= peak < 9e6  # the ones and their product live at once (4 MB each); the sum is 4 bytes


def test_in_turns_times_one_call_of_each_per_round():
    """The evaluation's speed-up: teacher and hybrid alternate (one untimed call of each first), so a machine that
    slows down part-way weighs on both; each gets the median of its own calls."""
    from src.bench.speed import in_turns

    calls = []

    def work(name: str, seconds: float):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    medians = in_turns({"a": work("a", 0.02), "b": work("b", 0.04)}, torch.device("cpu"), repeats=3)
    assert calls == ["a", "b"] * 4  # one untimed call of each, then one of each per round
    assert 0.015 < medians["a"] < 0.035 and 0.035 < medians["b"] < 0.07
