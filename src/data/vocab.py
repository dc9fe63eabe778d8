"""The character vocabulary: the sorted set of a corpus's characters; it travels inside every checkpoint so that later
stages and sampling decode identically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from src.errors import UserError


@dataclass
class Vocab:
    """Character vocabulary; ``itos`` is what is saved in checkpoints."""

    itos: list[str]

    def __post_init__(self) -> None:
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise UserError(f"characters not in the model's vocabulary: {''.join(unknown)!r}")
        # vectorised: code points -> their rank among the vocabulary's (sorted) code points; tens of M characters/s
        points = np.array([ord(c) for c in self.itos])
        order = np.argsort(points)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return torch.from_numpy(order[np.searchsorted(points[order], codes)].astype(np.int64))

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)
