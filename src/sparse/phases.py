"""Timing: the device a run measures on, one timed call, the one repeated-timing loop of the project (benchmark,
evaluation, pipeline, demo), and where a sparse forward spends its time: selection, mask building, kernel
(exclusive seconds of each phase)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

from src.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_SECONDS = 30.0  # time_runs: stop repeating after this long (at least one timed run)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Phases:
    """``with phases("kernel"): ...`` adds the block's wall-clock seconds to ``seconds["kernel"]``; a phase entered
    inside another is subtracted from the outer one, so the phases add up to the whole."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, start of its current stretch]

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.device)
        now = time.perf_counter()
        if self._stack:  # pause the enclosing phase
            self.seconds[self._stack[-1][0]] += now - self._stack[-1][1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            sync(self.device)
            now = time.perf_counter()
            name, start = self._stack.pop()
            self.seconds[name] += now - start
            if self._stack:
                self._stack[-1][1] = now


def no_phases(name: str):
    """The untimed stand-in for ``Phases``."""
    return contextlib.nullcontext()


def resolve_device(name: str) -> torch.device:
    name = {"gpu": "cuda"}.get(name, name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise UserError(f"device {name!r} is unknown: use one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but torch sees no CUDA GPU: use --device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps was asked for but is not available: use --device cpu (or auto)")
    return torch.device(name)


def timed(fn, args, device: torch.device) -> float:
    """Seconds of one call, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


BLOCKED_BELOW = 0.05  # time_runs: calls faster than this (seconds) are timed in blocks by blocked_autorange


def time_runs(fn, args, device: torch.device, repeats: int = 5, warmup: int = 1,
              max_seconds: float | None = MAX_SECONDS) -> list[float]:
    """Seconds per call of fn(*args), ``repeats`` measurements after ``warmup`` untimed calls: the one repeated-timing
    loop of the project (benchmark, evaluation, pipeline, demo), on torch.utils.benchmark's Timer at this process's
    thread count (CUDA's queued work included). A call faster than BLOCKED_BELOW is measured by blocked_autorange
    (blocks of calls, each long enough for the timer's resolution; one per-call mean per block); a slower one call
    by call, fewer when ``max_seconds`` is spent (at least one)."""
    from torch.utils import benchmark

    timer = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads())
    start = time.perf_counter()
    first = None
    for _ in range(warmup):
        first = timed(fn, args, device)
    if first is not None and first < BLOCKED_BELOW and device.type != "mps":
        budget = repeats * max(first, 0.01) * 10
        m = timer.blocked_autorange(min_run_time=min(budget, max_seconds or budget, 2.0))
        return list(m.times)
    times: list[float] = []
    while len(times) < repeats and (not times or max_seconds is None or time.perf_counter() - start < max_seconds):
        times.append(timer.timeit(1).median if device.type != "mps" else timed(fn, args, device))
    return times
