"""Windows of seq_len + 1 tokens (an input and its one-step-shifted target) and the training batches drawn per step."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from src.data.recall import dictionary, episode, episode_rng, periodic, repeat_passages


class RandomWindows(Dataset):
    """Every window of seq_len+1 tokens (input and its one-step-shifted target): for training, with shuffling."""

    def __init__(self, data: torch.Tensor, seq_len: int):
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return len(self.data) - self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[i : i + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


PLAIN, EPISODE, REPEAT, WARM, DICT = range(5)  # what a training window holds (MixedWindows)


class StepBatches(Sampler):
    """Training batches drawn per optimisation step: the batch of step i holds ``batch_size`` window offsets drawn
    uniformly (with replacement, as nanoGPT's get_batch) by a generator seeded with (seed, rank, i). A step's batch
    is the same however the run got there, so a run resumed at step s goes on exactly as it would have without the
    interruption; each process of a multi-device run draws its own. ``step()`` gives the step an epoch starts at.

    With ``episodes`` or ``repeats`` an item is (kind, offset, seed): that share of the windows carries a recall
    episode or repeated passages (MixedWindows). ``warmup`` [(length, steps), ...] makes the first steps an induction
    warm-up: periodic random strings of each length in turn, as many of them as hold batch_size x seq_len
    characters; the corpus's windows start after them. ``periodic``: that share of the later windows are periodic
    random strings of the whole window (the warm-up kept in the mix), ``dictionary`` that share key-value
    dictionaries (the key-matching drill). ``lengths`` [(length, steps, episodes), ...]: a
    length curriculum after the warm-up -- the mix's windows (corpus, episodes, repeats, periodic strings alike) at
    these shorter lengths in turn, as many as hold batch_size x seq_len characters, each stage with its own share of
    episodes, then at seq_len with ``episodes``."""

    def __init__(self, n_windows: int, batch_size: int, seed: int, step, rank: int = 0, episodes: float = 0.0,
                 repeats: float = 0.0, warmup=(), seq_len: int = 0, periodic: float = 0.0, lengths=(),
                 dictionary: float = 0.0):
        self.n, self.batch_size, self.seed, self.step, self.rank = n_windows, batch_size, seed, step, rank
        self.episodes, self.repeats, self.periodic, self.dictionary = episodes, repeats, periodic, dictionary
        self.warmup, self.seq_len = [(int(length), int(steps)) for length, steps in warmup], seq_len
        self.lengths = [(int(length), int(steps), float(e)) for length, steps, e in lengths]

    def __len__(self) -> int:  # an "epoch": as many steps as one pass over the windows would take
        return max(1, self.n // self.batch_size)

    def warm_length(self, i: int) -> int:
        """The warm-up's window length at step i (0: past the warm-up)."""
        return scheduled(self.warmup, i)

    def mix_stage(self, i: int) -> tuple[int, float]:
        """The mix's window length and share of episodes at step i (past the warm-up): the curriculum's, then seq_len
        and ``episodes``."""
        i -= sum(steps for _, steps in self.warmup)
        for length, steps, episodes in self.lengths:
            if i < steps:
                return length, episodes
            i -= steps
        return self.seq_len, self.episodes

    def __iter__(self):
        start = self.step()
        for i in range(start, start + len(self)):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + i)
            if length := self.warm_length(i):
                count = max(1, self.batch_size * self.seq_len // length)
                yield [(WARM, length, s) for s in torch.randint(2**62, (count,), generator=g).tolist()]
                continue
            length, e = self.mix_stage(i)
            count = self.batch_size if length == self.seq_len else max(1, self.batch_size * self.seq_len // length)
            offsets = torch.randint(self.n, (count,), generator=g).tolist()
            if not (e or self.repeats or self.periodic or self.dictionary):
                yield offsets if length == self.seq_len else [(PLAIN, o, 0, length) for o in offsets]
                continue
            share = torch.rand(count, generator=g).tolist()
            seeds = torch.randint(2**62, (count,), generator=g).tolist()
            r, p, d = self.repeats, self.periodic, self.dictionary
            kinds = [EPISODE if u < e else REPEAT if u < e + r else WARM if u < e + r + p else
                     DICT if u < e + r + p + d else PLAIN for u in share]
            short = () if length == self.seq_len else (length,)  # (a curriculum's window: its length last)
            yield [(kind, length, s) if kind in (WARM, DICT) else (kind, o, s, *short)  # a whole window of drill
                   for kind, o, s in zip(kinds, offsets, seeds)]


def scheduled(schedule, i: int) -> int:
    """The length a [(length, steps), ...] schedule gives step i (0: past its end)."""
    for length, steps in schedule:
        if i < steps:
            return length
        i -= steps
    return 0


class ConsecutiveWindows(RandomWindows):
    """Non-overlapping windows covering the split once: for validation and test."""

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__getitem__(i * self.seq_len)


class MixedWindows(RandomWindows):
    """Training windows of a corpus, some with text woven in (src/data/recall.py): an item is an offset (the corpus
    alone) or (kind, offset, seed) from StepBatches -- PLAIN the corpus alone, EPISODE a recall episode (the seed
    draws its task, depth, keys and values), REPEAT passages of random ``symbols`` (or, a share ``own`` of them, of
    the corpus) repeated later, WARM a periodic random string of ``offset`` characters (the induction warm-up), DICT
    ``offset`` characters of a key-value dictionary (the key-matching drill). A
    fourth element, where present, is a shorter window's length (the length curriculum); the window is seq_len long
    otherwise."""

    def __init__(self, data: torch.Tensor, seq_len: int, vocab, tasks=(), pairs: int = 4, queries: int = 2,
                 symbols: str = "", own: float = 0.0, depth_power: float = 1.0, gap_power: float = 1.0):
        super().__init__(data, seq_len)
        self.vocab, self.tasks, self.pairs, self.queries, self.symbols = vocab, tuple(tasks), pairs, queries, symbols
        self.own = own  # the share of repeated passages that are the corpus's own text (repeat_passages)
        self.depth_power = depth_power  # an episode's needle depth is u ** depth_power, u uniform in [0, 1)
        self.gap_power = gap_power  # the repeated passages' places u ** gap_power from the ends (repeat_passages)

    def depth(self, rng) -> float:
        return rng.random() ** self.depth_power

    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(item, int):
            return super().__getitem__(item)
        kind, offset, seed, *short = item
        length = short[0] if short else self.seq_len
        if kind == PLAIN:
            chunk = self.data[offset:offset + length + 1]
            return chunk[:-1], chunk[1:]
        rng = episode_rng(seed)
        if kind == WARM:
            text = periodic(rng, self.symbols, offset + 1)
        elif kind == DICT:
            text = dictionary(rng, offset + 1)
        else:
            filler = self.vocab.decode(self.data[offset:offset + length + 1])
            text = (episode(rng.choice(self.tasks), rng, filler, self.depth(rng), self.pairs, self.queries).text
                    if kind == EPISODE else repeat_passages(rng, filler, self.symbols, own=self.own,
                                                                    gap_power=self.gap_power))
        chunk = self.vocab.encode(text)
        return chunk[:-1], chunk[1:]
