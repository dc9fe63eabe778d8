"""The DataModule (src/data/module.py): deterministic, disjoint splits; a split too short for a batch."""

from __future__ import annotations

import pytest
import torch

from src.data import CharDataModule
from src.errors import UserError


def test_splits_deterministic_and_disjoint():
    a, b = CharDataModule(seq_len=64), CharDataModule(seq_len=64)
    a.setup(), b.setup()
    assert a.vocab.itos == b.vocab.itos
    n = sum(len(v) for v in a.splits.values())
    assert len(a.splits["val"]) == len(a.splits["test"]) == int(n * 0.05)
    for k in a.splits:
        assert torch.equal(a.splits[k], b.splits[k])
    x, y = next(iter(a.val_dataloader()))
    assert x.shape == (32, 64) and torch.equal(x[0, 1:], y[0, :-1])
    assert torch.equal(x[0], a.splits["val"][:64])


def test_training_split_shorter_than_one_batch(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("to be or not to be " * 200)  # 3,800 characters: 3,040 train tokens
    CharDataModule(name="text_file", path=str(p), seq_len=16, batch_size=64).setup()  # fits
    with pytest.raises(UserError, match="fewer than one batch"):
        CharDataModule(name="text_file", path=str(p), seq_len=16, batch_size=4096).setup()
