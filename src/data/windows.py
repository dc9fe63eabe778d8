"""Windows of seq_len + 1 tokens (an input and its one-step-shifted target) and the training batches drawn per step."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from src.data.recall import episode, episode_rng


class RandomWindows(Dataset):
    """Every window of seq_len+1 tokens (input and its one-step-shifted target): for training, with shuffling."""

    def __init__(self, data: torch.Tensor, seq_len: int):
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return len(self.data) - self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i : i + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


class StepBatches(Sampler):
    """Training batches drawn per optimisation step: the batch of step i holds ``batch_size`` window offsets drawn
    uniformly (with replacement, as nanoGPT's get_batch) by a generator seeded with (seed, rank, i). A step's batch
    is the same however the run got there, so a run resumed at step s goes on exactly as it would have without the
    interruption; each process of a multi-device run draws its own. ``step()`` gives the step an epoch starts at."""

    def __init__(self, n_windows: int, batch_size: int, seed: int, step, rank: int = 0, episodes: float = 0.0):
        self.n, self.batch_size, self.seed, self.step, self.rank = n_windows, batch_size, seed, step, rank
        self.episodes = episodes  # a share of the windows carry an episode: items (offset, its seed, or -1)

    def __len__(self) -> int:  # an "epoch": as many steps as one pass over the windows would take
        return max(1, self.n // self.batch_size)

    def __iter__(self):
        start = self.step()
        for i in range(start, start + len(self)):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + i)
            offsets = torch.randint(self.n, (self.batch_size,), generator=g).tolist()
            if not self.episodes:
                yield offsets
                continue
            carry = (torch.rand(self.batch_size, generator=g) < self.episodes).tolist()
            seeds = torch.randint(2**62, (self.batch_size,), generator=g).tolist()
            yield [(o, s if c else -1) for o, c, s in zip(offsets, carry, seeds)]


class ConsecutiveWindows(RandomWindows):
    """Non-overlapping windows covering the split once: for validation and test."""

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__getitem__(i * self.seq_len)


class EpisodeWindows(RandomWindows):
    """Training windows of a filler with a recall episode woven into some (src/data/recall.py): an item is (offset,
    seed); a seed of -1 is the filler alone, any other draws the episode's task, depth, keys and values."""

    def __init__(self, data: torch.Tensor, seq_len: int, vocab, tasks, pairs: int, queries: int):
        super().__init__(data, seq_len)
        self.vocab, self.tasks, self.pairs, self.queries = vocab, tuple(tasks), pairs, queries

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        offset, seed = item
        if seed < 0:
            return super().__getitem__(offset)
        rng = episode_rng(seed)
        filler = self.vocab.decode(self.data[offset:offset + self.seq_len + 1])
        task = rng.choice(self.tasks)
        chunk = self.vocab.encode(episode(task, rng, filler, rng.random(), self.pairs, self.queries).text)
        return chunk[:-1], chunk[1:]
