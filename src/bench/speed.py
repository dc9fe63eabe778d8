"""A trained hybrid against its teacher, timed side by side in one process: the whole model's forward on each kernel
that can serve it, in turns (``in_turns``; the evaluation's tokens per second), and one attention layer (the
pipeline's ``pipeline.measure_speed``, ``time_runs``)."""

from __future__ import annotations

import statistics
from typing import Callable

import torch
import torch.nn as nn

from src.bench.timing import time_runs, timed
from src.sparse import SparseAttention


def in_turns(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each of ``fns`` timed in turns -- one call of each per round, ``repeats`` rounds after one
    untimed call of each -- so that a shared machine whose speed drifts (another job starting or ending) weighs on
    every one alike, where timing one after the other would give the drift to whichever ran in it."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        timed(fn, (), device)  # warm-up (compiles flex)
    for _ in range(repeats):
        for name, fn in fns.items():  # one call each (whole-model forwards: far above the timer's resolution)
            times[name].append(timed(fn, (), device))
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def forward_speed(teacher: nn.Module, hybrid: Callable, sparse: list[SparseAttention], x: torch.Tensor,
                  kernels: list[str], repeats: int) -> dict:
    """Median seconds of the whole model's forward on ``x`` (B, T): ``teacher`` (SDPA) and ``hybrid`` with its
    ``sparse`` layers on each of ``kernels``, in this process, in turns (``in_turns``); tokens per second and
    speed-ups."""
    device, tokens = x.device, x.numel()
    saved = [s.kernel for s in sparse]

    def on(kernel: str) -> Callable[[], object]:
        def run():
            for s in sparse:
                s.kernel = kernel
            return hybrid(x)
        return run

    try:
        seconds = in_turns({"teacher": lambda: teacher(x), **{kernel: on(kernel) for kernel in kernels}}, device,
                           repeats)
    finally:
        for s, kernel in zip(sparse, saved):
            s.kernel = kernel
    out = {"batch": x.size(0), "seq_len": x.size(1), "device": str(device), "repeats": repeats,
           "teacher_tokens_per_s": tokens / seconds["teacher"], "teacher_ms": 1e3 * seconds["teacher"]}
    for kernel in kernels:
        out[f"{kernel}_tokens_per_s"] = tokens / seconds[kernel]
        out[f"{kernel}_ms"] = 1e3 * seconds[kernel]
        out[f"{kernel}_speedup"] = seconds["teacher"] / seconds[kernel]
    out["kernels"] = list(kernels)
    return out


@torch.no_grad()
def layer_speed(dense: nn.Module, hybrid: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Median forward time of one attention layer of a trained hybrid (``hybrid``: Q/K/V and output projections
    included, on the kernel its ``hybrid.kernel`` resolves to) against the teacher's own layer (``dense``), on one
    input ``x`` (B, T, C) of the model's shape."""
    device = x.device
    kernel = hybrid.sparse.kernel_for(dense.qkv(x)[0])
    sdpa_ms, sparse_ms = (1e3 * statistics.median(time_runs(fn, (x,), device, repeats=repeats))
                          for fn in (dense, hybrid))
    return {"kernel": kernel, "device": str(device), "sdpa_ms": sdpa_ms, "sparse_ms": sparse_ms,
            "measured_speedup": sdpa_ms / sparse_ms}
