"""The one LightningDataModule every stage trains and evaluates on: the corpus, the vocabulary and the three splits.

The split is contiguous and deterministic: the first ``1 - val_fraction - test_fraction`` of the text trains, then
validation, then test.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from src.data.corpora import corpus_text, synthetic_tokens
from src.data.vocab import Vocab
from src.data.windows import ConsecutiveWindows, RandomWindows, StepBatches
from src.errors import UserError


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
        self.vocab: Vocab | None = Vocab(list(vocab)) if vocab is not None else None
        self.splits: dict[str, torch.Tensor] = {}

    def load_tokens(self) -> torch.Tensor:
        """Read the corpus and encode it; sets ``self.vocab`` unless a checkpoint's vocabulary was given."""
        if self.name == "synthetic":
            tokens, itos = synthetic_tokens(self.synthetic_vocab, self.num_tokens, self.seed)
            self.vocab = self.vocab or Vocab(itos)
            return tokens
        text = corpus_text(self.name, self.path, self.package)
        self.vocab = self.vocab or Vocab.from_text(text)
        if len(self.vocab) < 2:
            raise UserError(f"the {self.name} corpus has a single distinct character ({self.vocab.itos[0]!r}): there "
                            "is nothing to predict; give a text with at least two different characters")
        return self.vocab.encode(text)

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
                f"the {self.name} corpus's training split ({n_train:,} tokens) holds {max(0, n_train - self.seq_len):,} "
                f"windows of seq_len={self.seq_len}, fewer than one batch (data.batch_size={self.batch_size}); "
                "use a longer text or a smaller data.batch_size"
            )
        self.splits = {
            "train": tokens[:n_train],
            "val": tokens[n_train : n_train + n_val],
            "test": tokens[n_train + n_val :],
        }

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        return f"{self.name}: vocabulary {len(self.vocab)}, tokens {sizes}"

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """Training: random windows, a batch per step (StepBatches: resume is exact). Validation and test: every
        window once, in order, shared out between the processes of a multi-device run."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        workers = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if shuffle:
            windows = RandomWindows(self.splits[split], self.seq_len)
            step = (lambda: trainer.global_step) if trainer is not None else (lambda: 0)
            return DataLoader(windows, batch_sampler=StepBatches(len(windows), self.batch_size, self.seed, step, rank),
                              **workers)
        windows = ConsecutiveWindows(self.splits[split], self.seq_len)
        sampler = DistributedSampler(windows, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return DataLoader(windows, batch_size=self.batch_size, sampler=sampler, **workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
