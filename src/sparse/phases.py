"""Where a sparse forward spends its time: selection, mask building, kernel (exclusive seconds of each phase)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


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
