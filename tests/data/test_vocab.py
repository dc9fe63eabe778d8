"""The character vocabulary (src/data/vocab.py)."""

from __future__ import annotations

import pytest
import torch

from src.data import Vocab, shakespeare_text
from src.errors import UserError


def test_vocab_round_trip_and_unknown():
    v = Vocab.from_text("abc\n")
    assert v.decode(v.encode("cab\n")) == "cab\n"
    with pytest.raises(UserError, match="not in the model's vocabulary"):
        v.encode("abz")


def test_vectorised_encode_matches_the_dictionary():
    text = shakespeare_text()[:20000] + "é"
    vocab = Vocab.from_text(text)
    assert torch.equal(vocab.encode(text), torch.tensor([vocab.stoi[c] for c in text]))
