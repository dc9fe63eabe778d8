"""The one LightningDataModule every stage trains and evaluates on: the corpus, the vocabulary and the three splits.

The split is contiguous and deterministic: the first ``1 - val_fraction - test_fraction`` of the text trains, then
validation, then test.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from src.data.corpora import TEXTS, corpus_text, synthetic_tokens
from src.data.recall import ALPHABET, TASKS, Episode, episode, episode_rng, evaluation_episodes
from src.data.token_windows import TokenEpisodeWindows
from src.data.vocab import Vocab
from src.data.windows import ConsecutiveWindows, MixedWindows, RandomWindows, StepBatches
from src.errors import UserError


def check_recall(filler: str, tasks, episodes: float, pairs: int, queries: int, depths, test_episodes: int) -> None:
    """The recall settings a type cannot check: one line naming the setting and the fix."""
    if filler not in TEXTS:
        raise UserError(f"data.filler={filler!r}: the episodes are woven into a text corpus: use one of "
                        f"{', '.join(TEXTS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise UserError(f"data.tasks={list(tasks)}: {'none given' if not tasks else repr(unknown[0]) + ' is unknown'};"
                        f" use some of {', '.join(TASKS)}")
    if not 0 <= episodes <= 1:
        raise UserError(f"data.episodes={episodes} must be a share of the training windows in [0, 1]")
    if pairs < 1 or not 1 <= queries <= pairs:
        raise UserError(f"data.pairs={pairs}, data.queries={queries}: give 1 or more pairs and 1 to data.pairs "
                        "queries")
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise UserError(f"data.depths={list(depths)} must be fractions in [0, 1] of the text before the question")
    if test_episodes < 1:
        raise UserError(f"data.test_episodes={test_episodes} must be 1 or more per task and depth")


def check_lengths(schedule, seq_len: int, episodes: float, drills: float, recall: bool) -> list[tuple[int, int, float]]:
    """data.lengths as [(length, steps, episodes), ...] -- a stage's share of episodes is its third value, or
    data.episodes -- or one line naming the fix. ``drills``: the share of the windows the other kinds take
    (data.repeats, .periodic, .dictionary)."""
    try:
        stages = [tuple(stage) for stage in schedule or ()]
    except TypeError:
        raise UserError(f"data.lengths={schedule}: give [[length, steps], ...], e.g. [[512,1500],[1024,800]]") from None
    out = []
    for (length, steps), stage in zip(check_schedule([s[:2] for s in stages], seq_len, "data.lengths"), stages):
        try:
            share = float(stage[2]) if len(stage) > 2 else episodes
        except (TypeError, ValueError):
            share = -1.0
        rest = 1 - drills
        if len(stage) > 3 or not 0 <= share <= rest + 1e-9 or (share and not recall):
            raise UserError(f"data.lengths: {list(stage)}: a stage is [length, steps] or [length, steps, episodes] "
                            f"with episodes a share in [0, {rest:g}] (data.repeats, .periodic and .dictionary take "
                            "the rest) and data=recall")
        out.append((length, steps, share))
    return out


def check_schedule(schedule, seq_len: int, setting: str = "data.warmup") -> list[tuple[int, int]]:
    """data.warmup or data.lengths as [(length, steps), ...], or one line naming the fix."""
    try:
        out = [(int(length), int(steps)) for length, steps in schedule or ()]
    except (TypeError, ValueError):
        raise UserError(f"{setting}={schedule}: give [[length, steps], ...], e.g. [[64,1200],[256,300]]") from None
    for length, steps in out:
        if not 2 <= length <= seq_len or steps < 0:
            raise UserError(f"{setting}: a length of 2 to model.seq_len={seq_len} characters and 0 or more steps "
                            f"each, got [{length}, {steps}]")
    return out


class CharDataModule(L.LightningDataModule):
    """The one DataModule of all stages: builds the corpus, the vocabulary and the three splits."""

    def __init__(
        self,
        name: str = "shakespeare",
        seq_len: int = 128,
        batch_size: int = 32,
        path: str | None = None,
        package: str = "torch",
        vocab_size: int = 64,
        num_tokens: int = 50_000,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 1337,
        vocab: list[str] | None = None,
        filler: str = "shakespeare",
        tasks=TASKS,
        episodes: float = 0.5,
        pairs: int = 4,
        queries: int = 2,
        depths=(0.1, 0.3, 0.5, 0.7, 0.9),
        test_episodes: int = 20,
        repeats: float = 0.0,
        warmup=(),
        periodic: float = 0.0,
        lengths=(),
        repeat_text: float = 0.0,
        depth_power: float = 1.0,
        dictionary: float = 0.0,
        gap_power: float = 1.0,
    ):
        super().__init__()
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise UserError("data.val_fraction and data.test_fraction must be in (0, 1) and sum to less than 1")
        if seq_len <= 0 or batch_size <= 0:
            raise UserError("seq_len and data.batch_size must be positive")
        self.name, self.seq_len, self.batch_size = name, seq_len, batch_size
        self.path, self.package, self.synthetic_vocab, self.num_tokens = path, package, vocab_size, num_tokens
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_workers, self.seed = num_workers, seed
        # a checkpoint's characters, or a model's tokenizer (teacher=hf, src/hf/tokens.py): the corpus in its tokens
        self.vocab: Vocab | None = (vocab if hasattr(vocab, "encode") else Vocab(list(vocab)) if vocab is not None
                                    else None)
        self.tokens = self.vocab is not None and not isinstance(self.vocab, Vocab)
        self.splits: dict[str, torch.Tensor] = {}
        self.recall = name == "recall"  # the filler's windows, a share of them with an episode (src/data/recall.py)
        if self.recall:
            check_recall(filler, tasks, episodes, pairs, queries, depths, test_episodes)
        self.filler, self.tasks, self.episodes = filler, tuple(tasks), float(episodes) if self.recall else 0.0
        self.pairs, self.queries, self.depths, self.test_episodes = pairs, queries, tuple(depths), test_episodes
        self.warmup = check_schedule(warmup, seq_len)
        taken, takers = self.episodes, ["data.episodes"]  # each kind of window a share of what the ones before leave
        for kind, share in (("repeats", repeats), ("periodic", periodic), ("dictionary", dictionary)):
            if not 0 <= float(share) <= 1 - taken + 1e-9:
                raise UserError(f"data.{kind}={share} must be a share of the training windows in [0, {1 - taken:g}] "
                                f"({', '.join(takers)} take the rest)")
            setattr(self, kind, float(share))
            taken, takers = taken + float(share), takers + [f"data.{kind}"]
        if self.dictionary and not self.recall:
            raise UserError("data.dictionary writes key-value items of letters and digits: use it with data=recall, "
                            "whose vocabulary holds them")
        self.lengths = check_lengths(lengths, seq_len, self.episodes, taken - self.episodes, self.recall)
        self.repeat_text = float(repeat_text)
        if not 0 <= self.repeat_text <= 1:
            raise UserError(f"data.repeat_text={repeat_text} must be a share of the repeated passages in [0, 1]")
        self.depth_power = float(depth_power)
        if not 0 < self.depth_power <= 10:
            raise UserError(f"data.depth_power={depth_power} must be in (0, 10]: 1 draws the training episodes' "
                            "depths uniformly, 2 puts 45 % of the needles in the first fifth of the text")
        self.gap_power = float(gap_power)
        if not 1 <= self.gap_power <= 10:
            raise UserError(f"data.gap_power={gap_power} must be in [1, 10]: 1 places the repeated passages uniformly, "
                            "2 puts 38 % of their gaps at 1000 characters or more (T = 2048)")
        if self.tokens and (name == "synthetic" or self.repeats or self.warmup or self.periodic or self.lengths
                            or self.dictionary):
            raise UserError(f"data={name} and data.repeats, .warmup, .periodic, .lengths, .dictionary write characters "
                            "into the windows: a model's tokenizer (teacher=hf) reads a text corpus as it is; use data="
                            "shakespeare, python_source, text_file or recall without them")
        if (self.repeats or self.warmup or self.periodic) and name == "synthetic":
            raise UserError("data.repeats, data.warmup and data.periodic write random characters into a text corpus: "
                            "data=synthetic is random already; set them on a text corpus or data=recall")

    def load_tokens(self) -> torch.Tensor:
        """Read the corpus and encode it; sets ``self.vocab`` unless a checkpoint's vocabulary was given."""
        if self.name == "synthetic":
            tokens, itos = synthetic_tokens(self.synthetic_vocab, self.num_tokens, self.seed)
            self.vocab = self.vocab or Vocab(itos)
            return tokens
        text = corpus_text(self.filler if self.recall else self.name, self.path, self.package)
        self.vocab = self.vocab or Vocab(sorted(set(text) | ALPHABET) if self.recall else sorted(set(text)))
        if len(self.vocab) < 2:
            raise UserError(f"the {self.name} corpus has a single distinct character ({self.vocab.itos[0]!r}): there "
                            "is nothing to predict; give a text with at least two different characters")
        tokens = self.vocab.encode(text)
        self.chars_per_token = len(text) / max(1, len(tokens))
        return tokens

    def episode_chars(self) -> int:
        """Characters of a recall episode's window: seq_len + 1, or with a model's tokenizer about as many as make
        seq_len + 1 of its tokens (90 % of them: an episode's numbers and names may tokenise less densely)."""
        return self.seq_len + 1 if not self.tokens else int(0.9 * (self.seq_len + 1) * self.chars_per_token)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        tokens = self.load_tokens()
        n = len(tokens)
        n_val, n_test = int(n * self.val_fraction), int(n * self.test_fraction)
        n_train = n - n_val - n_test
        need = self.seq_len + 1
        if min(n_train, n_val, n_test) < need:
            raise UserError(
                f"the {self.name} corpus ({n:,} tokens) is too short for seq_len={self.seq_len}: each of the "
                f"train/val/test splits ({n_train:,}/{n_val:,}/{n_test:,} tokens) needs at least {need}; "
                f"use a longer text or a shorter model.seq_len (now {self.seq_len})"
            )
        if n_train - self.seq_len < self.batch_size:  # training drops an incomplete last batch: none would be left
            raise UserError(
                f"the {self.name} corpus's training split ({n_train:,} tokens) holds "
                f"{max(0, n_train - self.seq_len):,} "
                f"windows of seq_len={self.seq_len}, fewer than one batch (data.batch_size={self.batch_size}); "
                "use a longer text or a smaller data.batch_size"
            )
        if self.recall:  # every task's episode must fit a window, wherever its needle sits
            for task in self.tasks:
                for depth in (0.0, 0.5, 1.0):
                    try:
                        episode(task, episode_rng(task, depth), " " * self.episode_chars(), depth, self.pairs,
                                self.queries)
                    except ValueError as e:
                        raise UserError(f"data=recall: {e}") from None
        self.splits = {
            "train": tokens[:n_train],
            "val": tokens[n_train : n_train + n_val],
            "test": tokens[n_train + n_val :],
        }

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        skew = f", needle depths u^{self.depth_power:g}" if self.depth_power != 1 else ""
        woven = (f" ({', '.join(self.tasks)} episodes in {self.episodes:.0%} of the training windows of {self.filler}"
                 f"{skew})" if self.recall else "")
        if self.repeats:
            woven += f" (repeated passages in {self.repeats:.0%} of the training windows" + (
                f", {self.repeat_text:.0%} of them the text's own" if self.repeat_text else "") + (
                f", places u^{self.gap_power:g} from the ends)" if self.gap_power != 1 else ")")
        if self.warmup:
            woven += " (induction warm-up: " + ", ".join(f"{s} steps at {n}" for n, s in self.warmup) + ")"
        if self.periodic:
            woven += f" (periodic random strings in {self.periodic:.0%} of the training windows)"
        if self.dictionary:
            woven += f" (key-value dictionaries in {self.dictionary:.0%} of the training windows)"
        if self.lengths:
            woven += " (length curriculum: " + ", ".join(
                f"{s} steps at {n}" + (f" with {e:.0%} episodes" if e != self.episodes else "")
                for n, s, e in self.lengths) + ")"
        return f"{self.name}: vocabulary {len(self.vocab)}, tokens {sizes}{woven}"

    def symbols(self) -> str:
        """The characters of the repeated passages and the warm-up: the vocabulary's letters, digits and space."""
        return "".join(c for c in self.vocab.itos if c.isascii() and (c.isalnum() or c == " "))

    def recall_episodes(self, split: str = "test") -> list[Episode]:
        """The fixed, seeded episodes of a split: ``test_episodes`` of each task at each depth, woven into windows of
        seq_len + 1 characters of the split's text (none for a corpus without episodes); with a model's tokenizer,
        as its token ids (at most seq_len + 1), the answers and needles at their tokens (src/hf/tokens.py)."""
        if not self.recall:
            return []
        text = self.vocab.decode(self.splits[split])
        episodes = evaluation_episodes(text, self.episode_chars(), self.tasks, self.depths, self.test_episodes,
                                       self.pairs, self.queries, self.seed)
        return [self.vocab.episode(e, self.seq_len + 1) for e in episodes] if self.tokens else episodes

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Training: random windows, a batch per step (StepBatches: resume is exact). Validation and test: every
        window once, in order, shared out between the processes of a multi-device run."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        workers = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if shuffle:
            mixed = MixedWindows if not self.tokens else TokenEpisodeWindows  # a model's tokens: episodes alone
            windows = (mixed(self.splits[split], self.seq_len, self.vocab, self.tasks, self.pairs, self.queries,
                             "" if self.tokens else self.symbols(), self.repeat_text, self.depth_power,
                             self.gap_power)
                       if self.recall or self.repeats or self.warmup or self.periodic or self.lengths
                       else RandomWindows(self.splits[split], self.seq_len))
            step = (lambda: trainer.global_step) if trainer is not None else (lambda: 0)
            batches = StepBatches(len(windows), self.batch_size, self.seed, step, rank, self.episodes, self.repeats,
                                  self.warmup, self.seq_len, self.periodic, self.lengths, self.dictionary)
            return DataLoader(windows, batch_sampler=batches, **workers)
        windows = ConsecutiveWindows(self.splits[split], self.seq_len)
        sampler = DistributedSampler(windows, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(windows, batch_size=self.batch_size, sampler=sampler, **workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
