"""How the project measures: the one repeated-timing loop (``time_runs``, on torch.utils.benchmark; the benchmarks,
the evaluation's whole-model speed, the pipeline's layer timing and the demo), where a sparse forward spends its time
(``Phases``: selection, mask building, kernel), the peak memory of one call, and the machine a figure was measured
on."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

MAX_SECONDS = 30.0  # time_runs: stop repeating after this long (at least one timed run)
BLOCKED_BELOW = 0.05  # time_runs: calls faster than this (seconds) are timed in blocks by blocked_autorange


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Phases:
    """``with phases("kernel"): ...`` adds the block's wall-clock seconds to ``seconds["kernel"]``; a phase entered
    inside another is subtracted from the outer one, so the phases add up to the whole. SparseAttention's forward
    takes one (``phases=``) and names its selection, mask building and kernel."""

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


def timed(fn, args, device: torch.device) -> float:
    """Seconds of one call, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


def time_runs(fn, args, device: torch.device, repeats: int = 5, warmup: int = 1,
              max_seconds: float | None = MAX_SECONDS, min_run_time: float | None = None) -> list[float]:
    """Seconds per call of fn(*args), ``repeats`` measurements after ``warmup`` untimed calls: the one repeated-timing
    loop of the project, on torch.utils.benchmark's Timer at this process's thread count (CUDA's queued work
    included). A call faster than BLOCKED_BELOW -- or any call, given ``min_run_time`` -- is measured by
    blocked_autorange (blocks of calls, each long enough for the timer's resolution, for ``min_run_time`` seconds or
    about ten times ``repeats`` calls; one per-call mean per block); a slower one call by call, fewer when
    ``max_seconds`` is spent (at least one)."""
    from torch.utils import benchmark

    timer = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads())
    start = time.perf_counter()
    first = None
    for _ in range(warmup):
        first = timed(fn, args, device)
    blocked = min_run_time is not None or (first is not None and first < BLOCKED_BELOW)
    if blocked and device.type != "mps":
        budget = min_run_time or min(repeats * max(first, 0.01) * 10, max_seconds or 2.0, 2.0)
        return list(timer.blocked_autorange(min_run_time=budget).times)
    times: list[float] = []
    while len(times) < repeats and (not times or max_seconds is None or time.perf_counter() - start < max_seconds):
        times.append(timer.timeit(1).median if device.type != "mps" else timed(fn, args, device))
    return times


def median_seconds(fn, args, device: torch.device, **kwargs) -> float:
    """The median of ``time_runs``."""
    return statistics.median(time_runs(fn, args, device, **kwargs))


@contextlib.contextmanager
def quiet_stderr():
    """Drop what is written to file descriptor 2 meanwhile: the C++ profiler's start/stop lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn, args, device: torch.device) -> int | None:
    """Most bytes allocated at once during one call of fn(*args), above what was live before it: on an accelerator
    (CUDA, MPS, ...) by torch.accelerator's public memory statistics; on the CPU, which has no such statistics in
    torch 2.13, from the profiler's allocator events."""
    if device.type != "cpu":
        if not torch.accelerator.is_available():
            return None
        sync(device)
        torch.accelerator.reset_peak_memory_stats(device)
        base = torch.accelerator.memory_allocated(device)
        fn(*args)
        sync(device)
        return torch.accelerator.max_memory_allocated(device) - base
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    # "[memory]" events: +bytes at each allocation, -bytes at each free of a block allocated inside the window
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"CPU {line.split(':', 1)[1].strip()}"
        except OSError:
            pass
        return f"CPU {platform.processor() or platform.machine()}"
    return device.type


def machine_info(device: torch.device) -> dict:
    """What a measurement was taken on: device, its name, torch and Python, threads and cores."""
    return dict(device=str(device), device_name=device_name(device), torch=torch.__version__,
                python=platform.python_version(), threads=torch.get_num_threads(),
                platform=f"{platform.system()} {platform.release()} {platform.machine()}",
                cpu_count=os.cpu_count())
