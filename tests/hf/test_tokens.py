"""A model's tokenizer as the project's vocabulary (src/hf/tokens.py): the corpus in its tokens, recall episodes
mapped to the tokens that hold their answers and needles."""

from __future__ import annotations

import re

import pytest
import torch

from src.data.corpora import corpus_text
from src.data.recall import episode, episode_rng
from src.hf.load import load_vocab


@pytest.fixture
def vocab(hf_models):
    return load_vocab({"model": str(hf_models["llama"])})


def test_text_round_trips_through_the_tokens(vocab):
    text = corpus_text("shakespeare")[:5000]
    tokens = vocab.encode(text)
    assert vocab.decode(tokens) == text and len(tokens) < len(text) and int(tokens.max()) < len(vocab)


@pytest.mark.parametrize("task", ["passkey", "multikey", "mqar"])
@pytest.mark.parametrize("depth", [0.1, 0.9])
def test_an_episode_s_answers_and_needles_are_its_tokens(vocab, task, depth):
    e = episode(task, episode_rng(task, depth), corpus_text("shakespeare")[:600], depth, 4, 2)
    t = vocab.episode(e, 1000)
    assert vocab.decode(t.text) == e.text and (t.task, t.depth) == (e.task, e.depth)
    for (a, b), (ta, tb) in zip(e.answers, t.answers):
        assert e.text[a:b] in vocab.decode(t.text[ta:tb]) and tb - ta <= b - a
    for n, tn in zip(e.needles, t.needles):
        assert vocab.decode(t.text[tn:]).startswith(e.text[n:n + 1]) or e.text[n] in vocab.decode(t.text[tn:tn + 1])
    short = vocab.episode(e, len(t.text) - 10)  # the oldest tokens dropped, the answers moved with them
    assert len(short.text) == len(t.text) - 10 and short.answers == tuple((a - 10, b - 10) for a, b in t.answers)


def test_training_windows_carry_episodes_in_the_model_s_tokens(vocab, tmp_path):
    """data=recall with a model's tokenizer: a share of the training windows carries an episode, every window
    seq_len tokens (src/data/token_windows.py)."""
    from src.data import CharDataModule

    (tmp_path / "plays.txt").write_text(corpus_text("shakespeare")[:120_000])
    dm = CharDataModule("recall", seq_len=160, batch_size=8, filler="text_file", path=str(tmp_path / "plays.txt"),
                        vocab=vocab, episodes=0.5, pairs=2)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (8, 160) and torch.equal(x[:, 1:], y[:, :-1])
    texts = [vocab.decode(row) for row in x]
    assert any("pass key" in t or "magic number" in t or re.search(r"[a-z]{3}:\d{3}", t) for t in texts)
    assert "episodes in 50% of the training windows" in dm.summary()
